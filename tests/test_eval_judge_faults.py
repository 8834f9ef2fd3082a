"""A judge that misbehaves on some rows (400, 5xx, non-JSON, hangs, redirects, echoes the key).

Each prediction carries "[mode=NAME]"; a loopback server answers that row accordingly. The run
must end with a results file, each bad row judge_failed with its reason, within the time
bound, and the API key must reach no other host and nothing written.
"""

import json
import logging
import threading
import time
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from redvillm.evaluate.cli import main as eval_cli
from redvillm.evaluate.judge import OpenAICompatibleJudge, build_messages
from redvillm.evaluate.judge.results import JudgeConfig, run_judge

KEY = "sk-fault-test-9f8e7d6c5b4a"
OK = '{"pred": "yes", "score": 4}'


class Judge:
    """A loopback chat-completions server; ``redirect_to`` is the other server's URL."""

    def __init__(self, redirect_to=None):
        self.requests, self.redirect_to = [], redirect_to
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"headers": dict(self.headers), "body": body})
                text = body["messages"][-1]["content"]
                mode = text.split("[mode=")[1].split("]")[0] if "[mode=" in text else "ok"
                try:
                    self.answer(mode)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):  # what a followed 301/302/303 becomes
                owner.requests.append({"headers": dict(self.headers), "body": None})
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def answer(self, mode):
                auth = self.headers.get("Authorization", "")
                if mode == "hang":
                    time.sleep(3)
                if mode.startswith("redirect"):
                    self.send_response(int(mode[-3:]))
                    self.send_header("Location", owner.redirect_to + "/v1/chat/completions")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, data = {
                    "400": (400, json.dumps({"error": f"bad request from {auth}"})),
                    "500": (500, "internal error"),
                    "nonjson": (200, "<html>gateway says hi</html>"),
                    "echo": (200, _completion(f"{{'pred': 'yes', 'score': 3}} (you sent {auth})")),
                }.get(mode, (200, _completion(OK)))
                data = data.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _completion(content):
    return json.dumps({"model": "m", "choices": [{"message": {"content": content}}]})


@pytest.fixture
def servers(monkeypatch):
    monkeypatch.setenv("FAULT_KEY", KEY)
    other = Judge()
    main = Judge(redirect_to=other.url)
    yield main, other
    main.close()
    other.close()


def write_preds(path, modes):
    rows = [{"question_id": f"q{i}-{m}", "question": "What?", "answer": "a", "pred": f"[mode={m}] p"}
            for i, m in enumerate(modes)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path, url, **kw):
    kw = {"retries": 1, "timeout": 0.3, "row_timeout": 1.0, "api_key_env": "FAULT_KEY", **kw}
    return JudgeConfig(str(tmp_path / "preds.jsonl"), "qa", str(tmp_path / "results.json"), judge_url=url + "/v1",
                       judge_model="pinned-1", **kw)


def test_bad_rows_fail_with_their_reason_and_the_run_writes_results(servers, tmp_path):
    main, _ = servers
    modes = ["ok", "400", "500", "nonjson", "hang", "ok"]
    write_preds(tmp_path / "preds.jsonl", modes)
    started = time.monotonic()
    result = CliRunner().invoke(eval_cli, ["judge", str(tmp_path / "preds.jsonl"), "--task", "qa", "--output",
                                           str(tmp_path / "results.json"), "--judge-url", main.url + "/v1",
                                           "--judge-model", "pinned-1", "--api-key-env", "FAULT_KEY",
                                           "--retries", "1", "--timeout", "0.3", "--row-timeout", "1"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "results.json").read_text())
    items = [json.loads(x) for x in (tmp_path / "results.verdicts.jsonl").read_text().splitlines()]
    status = {i["question_id"].split("-")[1] + str(n): (i["status"], i["reason"]) for n, i in enumerate(items)}
    assert status["ok0"] == ("judged", None) and status["ok5"] == ("judged", None)
    assert status["4001"][0] == "judge_failed" and "HTTP 400" in status["4001"][1]
    assert status["5002"][0] == "judge_failed" and "HTTP 500" in status["5002"][1]
    assert status["nonjson3"][0] == "judge_failed" and "not a chat completion" in status["nonjson3"][1]
    assert status["hang4"][0] == "judge_failed" and ("time bound" in status["hang4"][1]
                                                     or "timed out" in status["hang4"][1])
    assert saved["judge"]["counts"] == {"total": 6, "judged": 2, "judge_failed": 4, "no_prediction": 0}
    assert saved["judge"]["mean_score"] == 4 and saved["metrics"]["count"] == 6
    assert sum(r["body"]["messages"][-1]["content"].count("[mode=400]") for r in main.requests) == 1  # 4xx: no retry
    assert elapsed < 8  # the hanging row cost about its 1 s bound, not the server's 3 s per request
    assert KEY not in (tmp_path / "results.verdicts.jsonl").read_text()


def test_a_hanging_judge_costs_at_most_the_row_bound(servers, tmp_path):
    main, _ = servers
    judge = OpenAICompatibleJudge(main.url, "pinned-1", api_key_env=None, timeout=0.4, retries=5, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(Exception, match="time bound|timed out"):
        judge.complete(build_messages("qa", {"question": "q", "answer": "a", "pred": "[mode=hang]"}),
                       deadline=time.monotonic() + 0.7)
    assert time.monotonic() - started < 1.2 and judge.requests <= 2


def test_a_dead_judge_stops_being_asked(tmp_path):
    write_preds(tmp_path / "preds.jsonl", ["ok"] * 6)
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    results = run_judge(config(tmp_path, dead, retries=0, stop_after_failures=2))
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "results.verdicts.jsonl").read_text().splitlines()]
    assert results["judge"]["counts"]["judge_failed"] == 6 and results["judge"]["requests"] == 2
    assert all(r.startswith("not asked") for r in reasons[2:]) and reasons[0].startswith("judge unavailable")


@pytest.mark.parametrize("code", [302, 307])
def test_the_key_never_goes_to_another_host(servers, tmp_path, code):
    main, other = servers
    write_preds(tmp_path / "preds.jsonl", [f"redirect{code}", "ok"])
    results = run_judge(config(tmp_path, main.url))
    assert other.requests == []  # not followed at all, so nothing (and no key) reached the other port
    failed = json.loads((tmp_path / "results.verdicts.jsonl").read_text().splitlines()[0])
    assert "redirect" in failed["reason"] and other.url.split(":")[-1] in failed["reason"]
    assert results["judge"]["counts"]["judged"] == 1
    assert main.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_an_echoed_key_is_masked_everywhere(servers, tmp_path, caplog):
    main, _ = servers
    write_preds(tmp_path / "preds.jsonl", ["echo", "400"])
    with caplog.at_level(logging.DEBUG):
        results = run_judge(config(tmp_path, main.url, attempts=1))
    assert results["judge"]["counts"]["judged"] == 1
    written = "".join(p.read_text() for p in tmp_path.iterdir() if p.is_file())
    assert "Bearer ***" in (tmp_path / "results.judge-cache.jsonl").read_text()
    assert KEY not in written and KEY not in caplog.text and KEY not in json.dumps(results)
    assert "bad request from Bearer ***" in (tmp_path / "results.verdicts.jsonl").read_text()


def test_a_key_over_plain_http_to_another_host_is_warned_once(monkeypatch, caplog):
    monkeypatch.setenv("FAULT_KEY", KEY)

    class Refused:
        def open(self, request, timeout):
            raise urllib.error.URLError(ConnectionRefusedError("refused"))

    remote = OpenAICompatibleJudge("http://judge.example.org/v1", "pinned-1", api_key_env="FAULT_KEY", retries=0)
    local = OpenAICompatibleJudge("http://127.0.0.1:9/v1", "pinned-1", api_key_env="FAULT_KEY", retries=0)
    remote._opener = local._opener = Refused()
    messages = build_messages("ci", {"question": "q", "answer": "a", "pred": "p"})
    with caplog.at_level(logging.WARNING):
        for judge in (remote, remote, local):
            with pytest.raises(Exception, match="no answer"):
                judge.complete(messages)
    warnings = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert warnings == ["the API key goes to judge.example.org over plain http, readable on the network; use https"]
