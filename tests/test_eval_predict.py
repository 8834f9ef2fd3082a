"""redvillm-eval predict / judge / ask on a (meaningless) trained tiny run."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from redvillm.evaluate.judge.results import JudgeConfig, run_judge
from redvillm.evaluate.predict import PredictConfig, read_predictions, run_predict

ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture
def questions(qa_file, tmp_path):
    rows = [{"video_name": r["video_id"], "question": r["q"], "answer": r["a"], "question_id": f"q{i}"}
            for i, r in enumerate(json.loads(qa_file.read_text()))]
    rows.append({"video_name": "order_0000", "question": "哪个颜色先出现？", "answer": "红色", "question_id": "zh"})
    rows.append({"video_name": "never_extracted", "question": "What?", "answer": "x", "question_id": "gone"})
    path = tmp_path / "msvd_qa.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def predict(trained_run, small_cache, questions, output, **overrides):
    cfg = PredictConfig(str(trained_run), str(small_cache), str(questions), str(output), batch_size=3,
                        max_new_tokens=4, device="cpu", **overrides)
    return run_predict(cfg)


def test_predict_resumes_and_reports_missing_videos(trained_run, small_cache, questions, tmp_path):
    out = tmp_path / "preds.jsonl"
    summary = predict(trained_run, small_cache, questions, out)
    assert (summary.questions, summary.answered, summary.missing_video) == (9, 9, ["never_extracted"])
    records = read_predictions(out)
    assert set(records) == {f"q{i}" for i in range(8)} | {"zh"}
    assert records["zh"]["question"] == "哪个颜色先出现？" and "哪个" in out.read_text(encoding="utf-8")
    meta = json.loads((tmp_path / "preds.meta.json").read_text())
    assert meta["missing_videos"] == ["never_extracted"] and meta["predict_config"]["do_sample"] is False

    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10], encoding="utf-8")  # killed mid-line
    again = predict(trained_run, small_cache, questions, out)
    assert again.answered == 1 and set(read_predictions(out)) == set(records)
    assert read_predictions(out)[json.loads(lines[-1])["question_id"]]["pred"] == json.loads(lines[-1])["pred"]


def test_torchrun_parts_merge_by_question_id(trained_run, small_cache, questions, tmp_path):
    single = tmp_path / "one.jsonl"
    predict(trained_run, small_cache, questions, single)
    double = tmp_path / "two.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "redvillm.evaluate", "predict", "--model-dir", str(trained_run), "--cache", str(small_cache),
           "--questions", str(questions), "--output", str(double), "--batch-size", "3", "--max-new-tokens", "4",
           "--device", "cpu"]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ids = [json.loads(line)["question_id"] for line in double.read_text(encoding="utf-8").splitlines()]
    assert ids == [f"q{i}" for i in range(8)] + ["zh"]  # question order, each once
    assert {k: v["pred"] for k, v in read_predictions(double).items()} == \
        {k: v["pred"] for k, v in read_predictions(single).items()}
    assert not list((tmp_path / "two.jsonl.parts").glob("*.jsonl"))


class ScriptedJudge(BaseHTTPRequestHandler):
    """Says yes with score 4.5, except garbage for the Chinese question (row "zh")."""

    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        type(self).seen.append(text)
        reply = "no idea" if "哪个颜色先出现？" in text else '{"pred": "yes", "score": 4.5}'
        payload = json.dumps({"model": body["model"], "choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_judge_writes_results_with_metrics_and_judge_outcome(trained_run, small_cache, questions, tmp_path):
    ScriptedJudge.seen = []
    out = tmp_path / "msvd_preds.jsonl"
    predict(trained_run, small_cache, questions, out)
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        results = run_judge(JudgeConfig(str(out), "qa", str(tmp_path / "results.json"), judge_url=url,
                                        judge_model="scripted-judge-1"))
    finally:
        server.shutdown()
    assert results["dataset"] == "msvd" and results["counts"]["predictions"] == 9
    assert results["counts"]["missing_video_questions"] == 1
    assert results["metrics"]["count"] == 9 and results["metrics"]["contains"] is not None
    judge = results["judge"]
    assert judge["judge"]["model"] == "scripted-judge-1" and judge["counts"]["total"] == 9
    assert (judge["counts"]["judged"], judge["counts"]["judge_failed"]) == (8, 1)  # "zh" got garbage 3 times
    assert sum("哪个颜色先出现？" in t for t in ScriptedJudge.seen) == 3
    assert judge["mean_score"] == pytest.approx(4.5) and judge["accuracy"] == pytest.approx(1.0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["judge"]["counts"] == judge["counts"]
    verdicts = [json.loads(x) for x in (tmp_path / "results.verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 9 and [v["question_id"] for v in verdicts if v["status"] == "judge_failed"] == ["zh"]


def test_judge_without_a_judge_still_gives_numbers(trained_run, small_cache, questions, tmp_path):
    out = tmp_path / "preds.jsonl"
    predict(trained_run, small_cache, questions, out)
    results = run_judge(JudgeConfig(str(out), "qa", str(tmp_path / "r.json")))
    assert results["judge"] is None and results["metrics"]["count"] == 9


def test_ask_answers_in_any_language_and_refuses_a_bad_video(trained_run, synthetic_videos, tmp_path):
    video = synthetic_videos / "order_0000.mp4"
    ok = subprocess.run([sys.executable, "-m", "redvillm.evaluate", "ask", str(trained_run), str(video),
                         "哪个颜色先出现？", "--max-new-tokens", "3"], env=ENV, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "bad.mp4").write_text("not a video")
    bad = subprocess.run([sys.executable, "-m", "redvillm.evaluate", "ask", str(trained_run), str(tmp_path / "bad.mp4"),
                          "What happens?"], env=ENV, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "bad.mp4" in bad.stderr
