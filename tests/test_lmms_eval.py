"""`lmms-eval --model redvillm`: the entry point, the request handling, and a full offline run.

The end-to-end test runs lmms-eval's own CLI on a local task (a JSON dataset of the synthetic
videos, scored by exact match) and checks its results file and logged samples against
`redvillm-eval predict` on the same videos and questions. The judged run scores such a task
with lmms-eval's own ActivityNet-QA judge code and aggregations, asking a scripted judge on
127.0.0.1, and checks its numbers against the judge's rule applied to predict's answers.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install -e '.[lmms-eval]' "
                                        "&& pip install --no-deps lmms-eval==0.7.3)")
from lmms_eval.api.instance import Instance  # noqa: E402

from redvillm.errors import UserError  # noqa: E402
from redvillm.generation import Answer  # noqa: E402
from redvillm.evaluate.predict import PredictConfig, read_predictions, run_predict  # noqa: E402
from redvillm.lmms_eval_model import Generation, RedVillm  # noqa: E402

TASK = "redvillm_local_qa"
JUDGED_TASK = "redvillm_local_judged_qa"
MAX_NEW_TOKENS = 4
BATCH = 3


class RecordingAnswerer:
    """Stands in for VideoAnswerer: answers "<video file>|<question>" and records each call."""

    def __init__(self):
        self.calls, self.decoded, self.closed = [], [], False

    def tokens_each(self, videos):
        self.decoded.append(list(videos))
        return [UserError(f"{v}: cannot read this video") if "bad" in v else ("tokens", v) for v in videos]

    def generate(self, items, **kwargs):
        self.calls.append((list(items), kwargs))
        return [Answer(f"{os.path.basename(tokens[1])}|{question}", "stop", len(question), 1) for tokens, question in items]

    def close(self):
        self.closed = True


def request(doc_id, task, gen_kwargs, context="Q?"):
    return Instance("generate_until", (context, gen_kwargs, lambda doc: doc["visuals"], doc_id, task, "test"), 0,
                    {"task": task, "doc_id": doc_id, "repeats": 1})


def model_with(answerer, docs, batch_size=2):
    model = RedVillm(answerer=answerer, batch_size=batch_size)
    model.task_dict = {task: {"test": rows} for task, rows in docs.items()}
    return model


def test_the_entry_point_registers_the_model():
    from lmms_eval.models import get_model

    assert get_model("redvillm") is RedVillm


def test_generation_follows_the_task():
    greedy = Generation.from_task({"until": ["ASSISTANT:"], "max_new_tokens": 64, "temperature": 0, "top_p": 1.0,
                                   "num_beams": 1, "do_sample": True, "image_aspect_ratio": "original"}, "t")
    assert greedy == Generation(64, ("ASSISTANT:",), False, 1.0, 1.0)
    assert Generation.from_task({"until": "\n\n"}, "t").stop == ("\n\n",)
    assert Generation.from_task({"do_sample": True, "top_p": 0.5}, "t") == Generation(64, (), True, 1.0, 0.5)
    assert Generation.from_task({"temperature": 0.7}, "t") == Generation(64, (), True, 0.7, 1.0)
    assert Generation.from_task({"temperature": 0.7, "do_sample": False}, "t").do_sample is False
    with pytest.raises(ValueError, match="beam search"):
        Generation.from_task({"num_beams": 4}, "t")


def test_requests_are_answered_in_order_in_batches_per_setting():
    docs = {"a": [{"visuals": [f"/v/a{i}.mp4"]} for i in (0, 1, 0)], "b": [{"visuals": ["/v/b0.mp4"]}]}
    slow, fast = {"until": ["\n\n"], "max_new_tokens": 9}, {"until": "END", "max_new_tokens": 2, "temperature": 0.5}
    requests = [request(0, "a", slow), request(0, "b", fast, "other"), request(1, "a", slow), request(2, "a", slow)]
    answerer = RecordingAnswerer()
    model = model_with(answerer, docs)
    answers = model.generate_until(requests)
    assert [a.text for a in answers] == ["a0.mp4|Q?", "b0.mp4|other", "a1.mp4|Q?", "a0.mp4|Q?"]
    assert [a.token_counts.input_tokens for a in answers] == [2, 5, 2, 2]
    (first, first_kwargs), (second, second_kwargs) = answerer.calls
    assert [(tokens[1], question) for tokens, question in first] == \
        [("/v/a0.mp4", "Q?"), ("/v/a1.mp4", "Q?"), ("/v/a0.mp4", "Q?")]
    assert first_kwargs == dict(max_new_tokens=9, stop=["\n\n"], do_sample=False, temperature=1.0, top_p=1.0,
                                batch_size=2)
    assert second == [(("tokens", "/v/b0.mp4"), "other")]
    assert second_kwargs == dict(max_new_tokens=2, stop=["END"], do_sample=True, temperature=0.5, top_p=1.0,
                                 batch_size=2)
    model.generate_until([request(1, "a", slow)])  # a video asked about again is not decoded again
    assert answerer.decoded == [["/v/a0.mp4", "/v/a1.mp4"], ["/v/b0.mp4"]]
    model.clean()
    assert answerer.closed


def test_what_cannot_be_served_says_why():
    model = model_with(RecordingAnswerer(), {"img": [{"visuals": []}], "two": [{"visuals": ["/a.mp4", "/b.mp4"]}],
                                             "bad": [{"visuals": ["/v/bad.mp4"]}]})
    with pytest.raises(UserError, match="bad.mp4"):
        model.generate_until([request(0, "bad", {})])
    for task in ("img", "two"):
        with pytest.raises(ValueError, match=f"task {task} .*one video file per question"):
            model.generate_until([request(0, task, {})])
    with pytest.raises(NotImplementedError, match="generate_until tasks only"):
        model.loglikelihood([request(0, "img", {})])
    with pytest.raises(NotImplementedError, match="one turn"):
        model.generate_until_multi_round([request(0, "img", {})])
    with pytest.raises(TypeError, match="modeldir"):
        RedVillm(modeldir="run")
    with pytest.raises(ValueError, match="no 'auto'"):
        RedVillm(answerer=RecordingAnswerer(), batch_size="auto")


def test_each_process_takes_its_own_gpu(monkeypatch):
    from redvillm.lmms_eval_model import _rank_device

    assert _rank_device("cuda") == "cuda"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (_rank_device("cuda"), _rank_device("cpu"), _rank_device("cuda:0")) == ("cuda:1", "cpu", "cuda:0")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert _rank_device("auto") == "cuda:1"


EXACT_MATCH = """\
    metric_list:
      - metric: exact_match
        aggregation: mean
        higher_is_better: true
    """


def write_task(task_dir, videos, rows, task=TASK, scoring=EXACT_MATCH, utils_tail=""):
    """A local generate_until task over `videos` that asks each row's question as written;
    `scoring` is its YAML from metric_list on (lmms-eval's built-in exact match unless given),
    `utils_tail` more code for its local_utils.py."""
    task_dir.mkdir()
    (task_dir / "qa.json").write_text(json.dumps(rows), encoding="utf-8")
    (task_dir / "local_utils.py").write_text(textwrap.dedent(f"""\
        import os
        VIDEOS = {str(videos)!r}
        def doc_to_visual(doc):
            return [os.path.join(VIDEOS, doc["video_name"] + ".mp4")]
        def doc_to_text(doc, lmms_eval_specific_kwargs=None):
            return doc["question"]
        """) + textwrap.dedent(utils_tail))
    (task_dir / f"{task}.yaml").write_text(textwrap.dedent(f"""\
        task: {task}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {task_dir / "qa.json"}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function local_utils.doc_to_visual
        doc_to_text: !function local_utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          until: ["ASSISTANT:"]
          max_new_tokens: {MAX_NEW_TOKENS}
          temperature: 0
          do_sample: false
        """) + textwrap.dedent(scoring))


def run_lmms_eval(trained_run, task_dir, out_dir, processes=1, task=TASK, env=None):
    env = dict(env or os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(out_dir / "hf"),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    cmd = launcher + ["-m", "lmms_eval", "--model", "redvillm", "--model_args", f"model_dir={trained_run},device=cpu",
                      "--tasks", task, "--include_path", str(task_dir), "--batch_size", str(BATCH), "--log_samples",
                      "--output_path", str(out_dir)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    # lmms-eval exits 0 even when the evaluation failed: the files below are the real check.
    results = sorted(out_dir.rglob("*_results.json"))
    samples = sorted(out_dir.rglob(f"*_samples_{task}.jsonl"))
    assert result.returncode == 0 and len(results) == 1 and len(samples) == 1, \
        f"rc={result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    rows = [json.loads(line) for line in samples[0].read_text(encoding="utf-8").splitlines()]
    return json.loads(results[0].read_text(encoding="utf-8")), rows


@pytest.fixture(scope="module")
def local_task(trained_run, small_cache, synthetic_videos, qa_file, tmp_path_factory):
    """The synthetic questions answered by `redvillm-eval predict` from the cache, and a local
    lmms-eval task over the same videos whose reference answers are the predictions for half of
    the questions (so an exact match of 1/2 means lmms-eval scored exactly predict's answers)."""
    root = tmp_path_factory.mktemp("lmms")
    rows = [{"video_name": r["video_id"], "question": r["q"], "answer": r["a"], "question_id": f"q{i}"}
            for i, r in enumerate(json.loads(qa_file.read_text()))]
    (root / "questions.json").write_text(json.dumps(rows), encoding="utf-8")
    run_predict(PredictConfig(str(trained_run), str(small_cache), str(root / "questions.json"),
                              str(root / "preds.jsonl"), batch_size=BATCH, max_new_tokens=MAX_NEW_TOKENS, device="cpu"))
    preds = {qid: record["pred"] for qid, record in read_predictions(root / "preds.jsonl").items()}
    assert len(preds) == len(rows) == 8
    for row in rows[::2]:
        row["answer"] = preds[row["question_id"]].strip()
    expected = sum(preds[r["question_id"]].strip() == r["answer"] for r in rows) / len(rows)
    write_task(root / "task", synthetic_videos, rows)
    return root / "task", rows, preds, expected


def check_run(results, samples, rows, preds, expected):
    assert results["results"][TASK]["exact_match,none"] == pytest.approx(expected)
    assert results["config"]["model"] == "redvillm"
    assert [sample["input"] for sample in sorted(samples, key=lambda s: s["doc_id"])] == [r["question"] for r in rows]
    answered = {rows[sample["doc_id"]]["question_id"]: sample["filtered_resps"] for sample in samples}
    assert answered == preds
    for sample in samples:  # the prompt counts the video tokens (T + N = 8 + 49 for the tiny run)
        counts = sample["token_counts"][0]
        assert counts["input_tokens"] > 57 and 1 <= counts["output_tokens"] <= MAX_NEW_TOKENS


def test_lmms_eval_scores_what_redvillm_predict_answers(trained_run, local_task, tmp_path):
    task_dir, rows, preds, expected = local_task
    assert expected == 0.5
    check_run(*run_lmms_eval(trained_run, task_dir, tmp_path / "out"), rows, preds, expected)


def test_two_processes_share_the_questions(trained_run, local_task, tmp_path):
    task_dir, rows, preds, expected = local_task
    check_run(*run_lmms_eval(trained_run, task_dir, tmp_path / "out", processes=2), rows, preds, expected)


JUDGE_MODEL, JUDGE_KEY = "scripted-judge-1", "test-key-not-a-secret"
# The judged task's scoring is lmms-eval's own ActivityNet-QA code: its process_results asks the
# judge about each question, its aggregations make the task's two numbers. Its local_utils refuses
# to load (so nothing is asked) unless that code would ask this machine, with no proxy in between.
ACTIVITYNETQA_JUDGE = """\
    from urllib.parse import urlsplit
    import requests
    from lmms_eval.tasks.activitynetqa import utils as judge
    URL = getattr(judge, "API_URL", "")
    if judge.API_TYPE != "openai" or urlsplit(URL).hostname != "127.0.0.1" or requests.utils.get_environ_proxies(URL):
        raise SystemExit(f"not judging: lmms-eval's judge would ask {URL!r} (API_TYPE {judge.API_TYPE}), not 127.0.0.1")
    from lmms_eval.tasks.activitynetqa.utils import (activitynetqa_aggregate_accuracy,
                                                     activitynetqa_aggregate_score, activitynetqa_process_results)
    """
JUDGED_SCORING = """\
    process_results: !function local_utils.activitynetqa_process_results
    metric_list:
      - metric: gpt_eval_score
        aggregation: !function local_utils.activitynetqa_aggregate_score
        higher_is_better: true
      - metric: gpt_eval_accuracy
        aggregation: !function local_utils.activitynetqa_aggregate_accuracy
        higher_is_better: true
    """
# What lmms-eval's ActivityNet-QA judge code puts in its user message.
ASKED = re.compile(r"Question: (.*?)\nCorrect Answer: (.*?)\nPredicted Answer: (.*)\n\nProvide your evaluation", re.S)


def scripted_verdict(answer, pred):
    """The scripted judge's rule: yes and score 4 when the prediction holds the reference answer
    (case aside), otherwise no and score 1."""
    return ("yes", 4) if answer.strip().lower() in pred.lower() else ("no", 1)


class ScriptedJudge(BaseHTTPRequestHandler):
    """An OpenAI-style chat endpoint that records each question asked and replies in the Python
    dictionary form lmms-eval's ActivityNet-QA code parses."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        asked = ASKED.search(body["messages"][-1]["content"])
        self.server.asked.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                  "model": body["model"], "qa": asked.groups() if asked else None})
        reply = "{'pred': '%s', 'score': %d}" % scripted_verdict(*asked.groups()[1:]) if asked else "no idea"
        data = json.dumps({"model": body["model"], "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                         "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedJudge)
    server.asked = []
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def judge_env(server):
    """Every variable lmms-eval's ActivityNet-QA judge reads, naming the scripted judge; no proxies."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    return dict(env, API_TYPE="openai", OPENAI_API_URL=f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions",
                OPENAI_API_KEY=JUDGE_KEY, MODEL_VERSION=JUDGE_MODEL, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")


def test_lmms_eval_judges_redvillm_answers_with_its_activitynetqa_code(trained_run, local_task, synthetic_videos,
                                                                       scripted_judge, tmp_path):
    _, rows, preds, _ = local_task
    rows = [dict(row, type=i % 3) for i, row in enumerate(rows)]  # the judge code copies each row's type
    # Half the references are predict's answers (local_task); one more is a part of one, so the
    # verdicts are not split evenly and a judge answering the other way round would change both numbers.
    rows[1]["answer"] = preds[rows[1]["question_id"]].strip()[:2]
    write_task(tmp_path / "task", synthetic_videos, rows, JUDGED_TASK, JUDGED_SCORING, ACTIVITYNETQA_JUDGE)
    results, samples = run_lmms_eval(trained_run, tmp_path / "task", tmp_path / "out", task=JUDGED_TASK,
                                     env=judge_env(scripted_judge))
    verdicts = {r["question_id"]: scripted_verdict(r["answer"], preds[r["question_id"]]) for r in rows}
    yes = sum(correct == "yes" for correct, _ in verdicts.values())
    assert yes > len(rows) // 2
    scores = results["results"][JUDGED_TASK]
    assert scores["gpt_eval_accuracy,none"] == pytest.approx(100 * yes / len(rows))
    assert scores["gpt_eval_score,none"] == pytest.approx(sum(s for _, s in verdicts.values()) / len(rows))
    # One request per question, with its question, reference answer and redvillm's answer.
    assert sorted(a["qa"] for a in scripted_judge.asked) == \
        sorted((r["question"], r["answer"], preds[r["question_id"]]) for r in rows)
    assert {(a["path"], a["auth"], a["model"]) for a in scripted_judge.asked} == \
        {("/v1/chat/completions", f"Bearer {JUDGE_KEY}", JUDGE_MODEL)}
    for sample in samples:
        judged, qid = sample["gpt_eval_accuracy"], rows[sample["doc_id"]]["question_id"]
        assert (judged["pred"], judged["Correctness"], judged["score"]) == (preds[qid], *verdicts[qid])
