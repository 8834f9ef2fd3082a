"""Prediction files in the peer's format are judged; ours export to the peer's format."""

import json

import pytest
from click.testing import CliRunner

from official_layout import messages_the_script_sends, write_layout
from redvillm.evaluate.cli import main as eval_cli
from redvillm.evaluate.judge.rows import read_prediction_file
from redvillm.evaluate.judge.results import JudgeConfig, run_judge
from test_eval_judge_faults import Judge

OURS_QA = [
    {"question_id": "a1", "video_id": "v_x", "task": "qa", "qtype": "3", "pair": None,
     "question": " Is he running? ", "answer": "yes", "pred": "Yes, he is."},
    {"question_id": "a2", "video_id": "v_y", "task": "qa", "qtype": "4", "pair": None,
     "question": "颜色？", "answer": "红色", "pred": "红"},
]
OURS_CO = [
    {"question_id": "c1/q1", "video_id": "v_z", "task": "consistency", "pair": "q1", "question": "What colour?",
     "answer": "red", "pred": "red"},
    {"question_id": "c1/q2", "video_id": "v_z", "task": "consistency", "pair": "q2", "question": "Which color?",
     "answer": "red", "pred": "crimson"},
]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def judge():
    server = Judge()
    yield server
    server.close()


def test_peer_rows_without_ids_are_judged_with_stable_ids(judge, tmp_path):
    rows = [{"video_name": "v1", "Q": "What?", "A": "a dog", "pred": "a dog"},
            {"video_name": "v1", "Q": "Who?", "A": "a man", "pred": "a woman"},
            {"video_name": "v2", "Q": "Where?", "A": "park", "pred": None}]
    preds = jsonl(tmp_path / "peer.jsonl", rows)
    results = run_judge(JudgeConfig(str(preds), "ci", str(tmp_path / "r.json"), judge_url=judge.url,
                                    judge_model="pinned-1"))
    ids = [json.loads(x)["question_id"] for x in (tmp_path / "r.verdicts.jsonl").read_text().splitlines()]
    assert ids == ["row0", "row1", "row2"] and results["input"]["ids_from_position"] == 3
    assert "named row<N> by their position" in results["input"]["notes"][0]
    assert results["judge"]["counts"] == {"total": 3, "judged": 2, "judge_failed": 0, "no_prediction": 1}
    assert results["metrics"]["count"] == 3 and results["metrics"]["exact_match"] == pytest.approx(1 / 3)


def test_peer_json_list_consistency_rows_are_judged(judge, tmp_path):
    rows = [{"video_name": "v1", "Q1": "Colour?", "Q2": "Color?", "A": "red", "pred1": "red", "pred2": "red"},
            {"video_name": "v2", "Q1": "Count?", "Q2": "How many?", "A": "2", "pred1": "2", "pred2": "3"}]
    preds = tmp_path / "consistency_pred.json"
    preds.write_text(json.dumps(rows))
    results = run_judge(JudgeConfig(str(preds), "co", str(tmp_path / "r.json"), judge_url=judge.url,
                                    judge_model="pinned-1"))
    assert results["input"]["format"] == "json list" and results["judge"]["counts"]["judged"] == 2
    assert results["metrics"]["count"] == 4  # both answers of each pair
    user = judge.requests[1]["body"]["messages"][1]["content"]
    assert "How many?" in user and "3" in user


def test_duplicate_ids_keep_the_later_row(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [OURS_QA[0], {**OURS_QA[0], "pred": "No."}, OURS_QA[1]])
    source = read_prediction_file(path)
    assert [r["pred"] for r in source.rows] == ["No.", "红"] and source.duplicate_ids == 1


@pytest.mark.parametrize("rows, criterion", [(OURS_QA, "qa"), (OURS_CO, "co")])
def test_export_feeds_the_official_scripts_the_same_messages(tmp_path, rows, criterion):
    layout = write_layout(tmp_path / "qe")
    ours = jsonl(tmp_path / "preds.jsonl", rows)
    exported = tmp_path / "peer.json"
    result = CliRunner().invoke(eval_cli, ["export", str(ours), "--format", "videochatgpt", "--output", str(exported)])
    assert result.exit_code == 0, result.output
    peer = json.loads(exported.read_text(encoding="utf-8"))
    fields = {"video_name", "question_id", "Q1", "Q2", "A", "pred1", "pred2"} if criterion == "co" else \
        {"video_name", "question_id", "Q", "A", "pred"}
    assert all(set(r) == fields for r in peer) and len(peer) == (1 if criterion == "co" else 2)
    run_judge(JudgeConfig(str(ours), criterion, str(tmp_path / "r.json"), protocol="videochatgpt",
                          official_scripts=str(layout), dry_run=5))
    bodies = [json.loads(x)["body"] for x in (tmp_path / "r.requests.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(bodies) == len(peer)
    for i, (row, body) in enumerate(zip(peer, bodies)):
        assert body["messages"] == messages_the_script_sends(layout, criterion, row, tmp_path / f"o{i}")["messages"]
