"""The LLM judge against a real HTTP server on 127.0.0.1 that replays scripted replies.

Each prediction carries a "[case=NAME]" tag; the server answers the n-th request of a case
with the n-th step of its script (the last step repeats).
"""

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from redvillm.errors import UserError
from redvillm.evaluate.judge import (
    JudgeCache,
    JudgeUnavailable,
    OpenAICompatibleJudge,
    TransformersJudge,
    Verdict,
    build_messages,
    chat_completions_url,
    judge_all,
    parse_reply,
)

KEY = "sk-test-0123456789abcdef"
MODEL = "judge-pinned-0125"

SCRIPTS = {
    "ok": ['{"pred": "yes", "score": 4}'],
    "no35": ["Sure! ```json\n{'pred': 'no', 'score': 3.5}\n```"],
    "score3": ['{"score": 3}'],
    "prose_then_ok": ["The prediction is right, I would give it four.", '{"pred": "yes", "score": "5"}'],
    "prose": ["I think the answer is mostly correct."],
    "score7": ['{"pred": "yes", "score": 7}'],
    "maybe": ['{"pred": "maybe", "score": 2}'],
    "err500": [500, 500, '{"pred": "yes", "score": 2}'],
    "always500": [500],
    "rate": [(429, "0.05"), '{"pred": "no", "score": 1}'],
    "slow": [("sleep", 1.0, '{"pred": "yes", "score": 5}'), '{"pred": "yes", "score": 3}'],
    "unauth": [401],
}


class Server:
    """Scripted chat-completions server; records every request it receives."""

    def __init__(self):
        self.requests: list[dict] = []
        self.per_case: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                case = re.search(r"\[case=(\w+)\]", user).group(1)
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                            "case": case})
                    n = server.per_case.get(case, 0)
                    server.per_case[case] = n + 1
                script = SCRIPTS[case]
                step = script[min(n, len(script) - 1)]
                try:
                    self.respond(step)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def respond(self, step):
                if isinstance(step, tuple) and step[0] == "sleep":
                    time.sleep(step[1])
                    step = step[2]
                if isinstance(step, str):
                    self.send(200, {"model": MODEL + "-served", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": step}}]})
                    return
                status, retry_after = step if isinstance(step, tuple) else (step, None)
                auth = self.headers.get("Authorization", "")
                self.send(status, {"error": {"message": f"scripted {status}, you sent {auth}"}}, retry_after)

            def send(self, status, payload, retry_after=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def count(self, case=None):
        return sum(case is None or r["case"] == case for r in self.requests)


@pytest.fixture
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def judge(server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", KEY)
    delays = []

    def sleep(seconds):
        delays.append(seconds)
        time.sleep(seconds)

    j = OpenAICompatibleJudge(server.url + "/v1/", MODEL, api_key_env="TEST_JUDGE_KEY", max_tokens=50,
                              seed=7, timeout=0.4, retries=3, backoff=0.01, sleep=sleep)
    j.delays = delays
    return j


def qa_item(case, qid=None, answer_type=None):
    qid = qid or case
    item = {"question_id": qid, "question": "What is the man doing?", "answer": "cooking",
            "pred": f"[case={case}] he is making food ({qid})"}
    if answer_type is not None:
        item["type"] = answer_type
    return item


def messages(case):
    return build_messages("qa", {"question": "q", "answer": "a", "pred": f"[case={case}]"})


# ---------------------------------------------------------------------------- parse_reply


@pytest.mark.parametrize("text, criterion, expected", [
    ('{"pred": "yes", "score": 4}', "qa", Verdict(4.0, "yes")),
    ("{'pred': 'no', 'score': 0}", "qa", Verdict(0.0, "no")),
    ('Here you go: {"pred": "Yes", "score": "4"} Hope this helps.', "qa", Verdict(4.0, "yes")),
    ('```json\n{"pred": "no", "score": 2.5}\n```', "qa", Verdict(2.5, "no")),
    ("{'score': 3.5}", "ci", Verdict(3.5)),
    ('{"score": 4.75, "reason": "mostly {right}"}', "tu", Verdict(4.75)),
    ("{pred: yes, score: 5}", "qa", Verdict(5.0, "yes")),
    ('{"pred": true, "score": 1}', "qa", Verdict(1.0, "yes")),
    ('{"PRED": "no", "Score": 0.5}', "qa", Verdict(0.5, "no")),
    ('{"score": 2} and later {"score": 9}', "do", Verdict(2.0)),
    ("The answer is correct, score 4.", "qa", None),
    ('{"pred": "yes", "score": 7}', "qa", None),
    ('{"pred": "yes", "score": -1}', "qa", None),
    ('{"pred": "maybe", "score": 3}', "qa", None),
    ('{"score": 4}', "qa", None),  # qa needs pred
    ('{"pred": "yes"}', "qa", None),
    ('{"score": "four"}', "cu", None),
    ('{"score": true}', "cu", None),
    ('{"score": NaN}', "cu", None),
    ("{'score': __import__('os').system('true')}", "ci", None),  # literal_eval, never eval
    ("", "co", None),
])
def test_parse_reply(text, criterion, expected):
    assert parse_reply(text, criterion) == expected


def test_parse_reply_keeps_fractions_and_rejects_unknown_criterion():
    assert parse_reply('{"score": 3.5}', "co").score == 3.5
    with pytest.raises(UserError):
        parse_reply('{"score": 3}', "xx")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1",
                                 "http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1/chat/completions"])
def test_url_normalised(url):
    assert chat_completions_url(url) == "http://127.0.0.1:8000/v1/chat/completions"
    assert chat_completions_url("https://h/api/openai") == "https://h/api/openai/chat/completions"


def test_prompts_per_criterion():
    fields = {"question": "Q?", "answer": "A.", "pred": "P."}
    systems = {c: build_messages(c, fields)[0]["content"] for c in ("qa", "ci", "do", "cu", "tu")}
    assert len(set(systems.values())) == 5 and '"pred"' in systems["qa"] and '"score"' in systems["ci"]
    co = build_messages("co", {"question1": "Q1?", "question2": "Q2?", "answer": "A.", "pred1": "P1",
                               "pred2": "P2"})
    assert [m["role"] for m in co] == ["system", "user"]
    assert all(s in co[1]["content"] for s in ("Q1?", "Q2?", "A.", "P1", "P2"))
    assert build_messages("ci", fields, attempt=1) != build_messages("ci", fields)


# ---------------------------------------------------------------------------- HTTP backend


def test_request_body_key_and_describe(server, judge):
    assert judge.complete(messages("ok")) == '{"pred": "yes", "score": 4}'
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == MODEL and body["temperature"] == 0 and body["max_tokens"] == 50 and body["seed"] == 7
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    described = judge.describe()
    assert described["model"] == MODEL and described["parameters"]["temperature"] == 0
    assert described["observed"]["models"] == [MODEL + "-served"]
    assert KEY not in json.dumps(described) and KEY not in repr(vars(judge))


def test_no_key_no_header(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    OpenAICompatibleJudge(server.url, MODEL).complete(messages("ok"))
    assert "Authorization" not in server.requests[0]["headers"]


def test_retries_5xx_with_exponential_backoff(server, judge):
    assert judge.complete(messages("err500")) == '{"pred": "yes", "score": 2}'
    assert server.count() == 3 and judge.requests == 3
    assert judge.delays == pytest.approx([0.01, 0.02])


def test_429_honours_retry_after(server, judge):
    assert judge.complete(messages("rate")) == '{"pred": "no", "score": 1}'
    assert server.count() == 2 and judge.delays == pytest.approx([0.05])


def test_timeout_is_retried(server, judge):
    started = time.perf_counter()
    assert judge.complete(messages("slow")) == '{"pred": "yes", "score": 3}'
    assert server.count("slow") == 2 and len(judge.delays) == 1
    assert time.perf_counter() - started < 0.9  # gave up on the slow reply at the 0.4 s timeout


def test_401_fails_at_once_without_leaking_the_key(server, judge):
    with pytest.raises(JudgeUnavailable, match="HTTP 401") as info:
        judge.complete(messages("unauth"))
    assert server.count() == 1 and judge.delays == []
    assert KEY not in str(info.value)  # the server echoed it; the message redacts it


def test_gives_up_after_bounded_retries(server, judge):
    with pytest.raises(JudgeUnavailable, match="4 attempts"):
        judge.complete(messages("always500"))
    assert server.count() == 4 and judge.delays == pytest.approx([0.01, 0.02, 0.04])


def test_connection_refused_is_retried_then_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = OpenAICompatibleJudge(f"http://127.0.0.1:{port}", MODEL, retries=2, backoff=0.001, timeout=1)
    with pytest.raises(JudgeUnavailable, match="3 attempts"):
        dead.complete(messages("ok"))
    assert dead.requests == 3


# ---------------------------------------------------------------------------- judge_all + cache

QA_CASES = ["ok", "no35", "prose_then_ok", "prose", "score7", "maybe", "err500"]


def qa_items():
    items = [qa_item(c, answer_type=i % 2) for i, c in enumerate(QA_CASES)]
    items.append({"question_id": "missing", "question": "q", "answer": "a", "pred": None, "error": "no video"})
    items.append(qa_item("ok", qid="last"))  # a well-formed reply is the cache file's last line
    return items


def test_judge_all_counts_failures_and_keeps_fractions(server, judge, tmp_path):
    seen = []
    outcome = judge_all(qa_items(), "qa", judge, JudgeCache(tmp_path / "cache.jsonl"), progress=seen.append)
    by_id = {v.question_id: v for v in outcome.verdicts}
    assert [v.question_id for v in outcome.verdicts] == QA_CASES + ["missing", "last"]
    assert (by_id["no35"].pred, by_id["no35"].score) == ("no", 3.5)
    assert (by_id["prose_then_ok"].score, by_id["prose_then_ok"].attempts) == (5.0, 2)
    for bad in ("prose", "score7", "maybe"):
        assert by_id[bad].status == "judge_failed" and by_id[bad].score is None and by_id[bad].reply
        assert server.count(bad) == 3  # attempts_per_item, never forever
    assert by_id["missing"].status == "no_prediction" and server.count() == 1 + 1 + 2 + 9 + 3 + 1
    assert (outcome.judged, outcome.failed) == (5, 3)
    assert outcome.accuracy == pytest.approx(4 / 5)
    assert outcome.mean_score == pytest.approx((4 + 3.5 + 5 + 2 + 4) / 5)
    result = outcome.to_dict()
    assert result["counts"] == {"total": 9, "judged": 5, "judge_failed": 3, "no_prediction": 1}
    assert result["judge"]["model"] == MODEL and set(result["by_type"]) == {"0", "1"}
    assert seen[-1].done == seen[-1].total == 9 and (seen[-1].judged, seen[-1].failed) == (5, 3)
    assert KEY not in json.dumps(result) and KEY not in (tmp_path / "cache.jsonl").read_text()


def test_rerun_asks_nothing_and_crash_reasks_only_the_torn_line(server, judge, tmp_path):
    path = tmp_path / "cache.jsonl"
    first = judge_all(qa_items(), "qa", judge, JudgeCache(path))
    sent = server.count()
    again = judge_all(qa_items(), "qa", judge, JudgeCache(path))
    assert server.count() == sent and again.requests == 0 and again.cache_hits == first.requests
    assert again.verdicts == first.verdicts

    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 25])  # killed while writing the last reply
    cache = JudgeCache(path)
    assert len(cache) == first.requests - 1
    resumed = judge_all(qa_items(), "qa", judge, cache)
    assert server.count() == sent + 1 and "(last)" in server.requests[-1]["body"]["messages"][-1]["content"]
    assert resumed.verdicts == first.verdicts
    assert all(json.loads(line) for line in path.read_text().splitlines())  # the file is whole again


def test_cache_key_depends_on_judge_and_criterion(server, judge, tmp_path):
    cache = JudgeCache(tmp_path / "cache.jsonl")
    judge_all([qa_item("ok")], "qa", judge, cache)
    other = OpenAICompatibleJudge(server.url, MODEL + "-other", api_key_env=None, backoff=0.01)
    judge_all([qa_item("ok")], "qa", other, cache)
    judge_all([{"question": "q", "answer": "a", "pred": "[case=score3]"}], "ci", judge, cache)
    assert server.count() == 3 and len(cache) == 3


def test_consistency_items(server, judge, tmp_path):
    items = [{"question_id": 1, "Q1": "What color?", "Q2": "Which colour?", "A": "red",
              "pred1": "[case=score3] red", "pred2": "crimson"},
             {"question_id": 2, "Q1": "x", "Q2": "y", "A": "z", "pred1": "only one"}]
    outcome = judge_all(items, "co", judge, JudgeCache(tmp_path / "c.jsonl"))
    assert [(v.status, v.score) for v in outcome.verdicts] == [("judged", 3.0), ("no_prediction", None)]
    assert outcome.accuracy is None and outcome.mean_score == 3.0
    user = server.requests[0]["body"]["messages"][1]["content"]
    assert "Which colour?" in user and "crimson" in user


def test_workers_keep_order_and_a_refused_row_does_not_stop_the_run(server, judge, tmp_path):
    cache = JudgeCache(tmp_path / "c.jsonl")
    cases = ["ok", "no35", "score7", "ok"]
    items = [qa_item(c, qid=str(i)) for i, c in enumerate(cases)]
    outcome = judge_all(items, "qa", judge, cache, workers=2)
    assert [v.question_id for v in outcome.verdicts] == ["0", "1", "2", "3"] and outcome.failed == 1
    after = judge_all([qa_item("ok", qid="new"), qa_item("unauth"), qa_item("ok", qid="later")], "qa", judge, cache)
    assert [v.status for v in after.verdicts] == ["judged", "judge_failed", "judged"]
    assert "HTTP 401" in after.verdicts[1].reason and KEY not in after.verdicts[1].reason
    assert any(line.count('"new"') for line in (tmp_path / "c.jsonl").read_text().splitlines())


def test_bad_rows_are_refused_before_any_request(server, judge):
    with pytest.raises(UserError, match="row 1.*reference answer"):
        judge_all([qa_item("ok"), {"question": "q", "pred": "p"}], "qa", judge, None)
    with pytest.raises(UserError, match="row 0 is a list"):
        judge_all([["not", "an", "object"]], "ci", judge, None)
    assert server.count() == 0


# ---------------------------------------------------------------------------- local backend


def test_transformers_judge_local_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from redvillm.data.tiny_llava import build_tokenizer

    tokenizer = build_tokenizer()
    # No system role: the judge folds the system message into the user turn.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}{{ m['role'].upper() + ': ' + m['content'] + ' ' }}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")

    local = TransformersJudge(tmp_path / "judge", device="cpu", dtype="float32", max_new_tokens=4)
    reply = local.complete(build_messages("ci", {"question": "q", "answer": "a", "pred": "p"}))
    assert isinstance(reply, str) and reply == local.complete(
        build_messages("ci", {"question": "q", "answer": "a", "pred": "p"}))  # greedy
    described = local.describe()
    assert described["parameters"]["decoding"] == "greedy" and described["runtime"]["transformers"]
    outcome = judge_all([{"question": "q", "answer": "a", "pred": "p"}], "ci", local,
                        JudgeCache(tmp_path / "c.jsonl"), attempts_per_item=2)
    (verdict,) = outcome.verdicts
    # A random tiny model cannot produce a verdict: the row must be failed, with the raw reply kept.
    expected = parse_reply(reply, "ci")
    assert verdict.status == ("judged" if expected else "judge_failed")
    assert verdict.reply == (None if expected else local.complete(
        build_messages("ci", {"question": "q", "answer": "a", "pred": "p"}, attempt=1)))
    assert verdict.attempts == (1 if expected else 2) and outcome.requests == verdict.attempts
