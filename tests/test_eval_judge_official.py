"""The videochatgpt protocol: messages read from scripts in the official layout, byte for byte.

The scripts are stand-ins (tests/official_layout.py: the public layout, invented wording).
The oracle is the stand-in script itself, run on the row with a stub openai module: what our
parser rebuilds must equal what the script builds, for every criterion and odd rows.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from official_layout import messages_the_script_sends, write_layout
from redvillm.errors import UserError
from redvillm.evaluate.judge import SCRIPTS, VideoChatGPTProtocol, item_fields, load_script
from redvillm.evaluate.judge.results import JudgeConfig, run_judge

ODD = [
    {"video_name": "v1", "Q": "  What happens first?  ", "A": "\na man\nenters\n", "pred": " He walks in. "},
    {"video_name": "v2", "Q": "视频里的人在做什么？", "A": "他在做饭", "pred": "做饭。"},
    {"video_name": "v3", "Q": 'Is it "red" or \'blue\'?', "A": "{red}", "pred": "{'pred': 'yes', 'score': 5}"},
    {"video_name": "v4", "Q": "How many?", "A": 3, "pred": "\t3 dogs\r\n"},
]
ODD_CO = [{"video_name": "v5", "Q1": " Which colour? ", "Q2": "What color?\n", "A": "红色 {x}",
           "pred1": "It's \"red\".", "pred2": "  red  "}]


@pytest.fixture
def layout(tmp_path):
    return write_layout(tmp_path / "quantitative_evaluation")


@pytest.mark.parametrize("criterion", ["qa", "ci", "do", "cu", "tu", "co"])
def test_messages_equal_what_the_script_sends(layout, tmp_path, criterion):
    protocol = VideoChatGPTProtocol(layout)
    rows = ODD_CO if criterion == "co" else ODD
    for i, row in enumerate(rows):
        official = messages_the_script_sends(layout, criterion, row, tmp_path / f"out{i}")
        ours = protocol.messages(criterion, item_fields(row, criterion, i))
        assert ours == official["messages"]
        assert json.dumps(ours, ensure_ascii=False).encode() == json.dumps(official["messages"],
                                                                           ensure_ascii=False).encode()
        assert protocol.messages(criterion, item_fields(row, criterion, i), attempt=2) == ours  # re-asks identical
    script = protocol.script(criterion)
    assert script.request == {"model": "gpt-3.5-turbo"} and script.roles == ("system", "user")
    assert protocol.describe(criterion)["official_request"] == {"model": "gpt-3.5-turbo"}


def test_whitespace_and_braces_reach_the_judge_untouched(layout):
    user = VideoChatGPTProtocol(layout).messages("qa", item_fields(ODD[0], "qa", 0))[1]["content"]
    assert "<question>   What happens first?  \n" in user and "<answer> \na man\nenters\n\n" in user
    assert user.endswith("{not a field} tail Answer with {'score': 1.5} only.")


@pytest.mark.parametrize("breakage, expected", [
    (None, "not a directory"),
    ("delete", "not found"),
    ("syntax", "not parseable Python"),
    ("no_annotate", "expected a top-level function annotate()"),
    ("attribute", "placeholders to be plain variable names"),
    ("unknown_field", "prediction-row field 'question'"),
    ("no_model", "expected a model= keyword"),
])
def test_unexpected_scripts_are_named_in_one_line(layout, tmp_path, breakage, expected):
    path = layout / SCRIPTS["ci"]
    text = path.read_text()
    folder = layout
    if breakage is None:
        folder = tmp_path / "nowhere"
    elif breakage == "delete":
        path.unlink()
    elif breakage == "syntax":
        path.write_text(text.replace("def main():", "def main(:"))
    elif breakage == "no_annotate":
        path.write_text(text.replace("def annotate(", "def judge_rows("))
    elif breakage == "attribute":
        path.write_text(text.replace('f"<question> {question}', 'f"<question> {qa_set[\'q\']}'))
    elif breakage == "unknown_field":
        path.write_text(text.replace("sample['Q']", "sample['question']"))
    elif breakage == "no_model":
        path.write_text(text.replace('model="gpt-3.5-turbo",', ""))
    with pytest.raises(UserError, match=expected) as info:
        load_script(folder, "ci")
    assert "\n" not in str(info.value)
    if breakage not in (None,):
        assert str(info.value).startswith(str(path))


class Recorder(BaseHTTPRequestHandler):
    bodies: list = []
    reply = "{'pred': 'yes', 'score': 4.8}"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        payload = json.dumps({"model": body["model"], "choices": [{"message": {"content": self.reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    Recorder.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("original", [False, True])
def test_end_to_end_sends_the_scripts_messages_and_records_how(layout, recorder, tmp_path, original):
    preds = tmp_path / "anet_preds.json"
    preds.write_text(json.dumps(ODD, ensure_ascii=False), encoding="utf-8")  # the peer's JSON list
    out = tmp_path / "results.json"
    results = run_judge(JudgeConfig(str(preds), "qa", str(out), judge_url=recorder, judge_model="gpt-3.5-turbo-0125",
                                    protocol="videochatgpt", official_scripts=str(layout),
                                    original_scoring=original))
    assert len(Recorder.bodies) == len(ODD)
    for i, (row, body) in enumerate(zip(ODD, Recorder.bodies)):
        assert set(body) == {"model", "messages"}  # the script sends no temperature or token cap
        assert body["model"] == "gpt-3.5-turbo-0125"
        assert body["messages"] == messages_the_script_sends(layout, "qa", row, tmp_path / f"o{i}")["messages"]
    judge = results["judge"]
    assert judge["counts"] == {"total": 4, "judged": 4, "judge_failed": 0, "no_prediction": 0}
    assert judge["mean_score"] == pytest.approx(4.0 if original else 4.8)  # int() truncation only when asked
    assert judge["accuracy"] == 1.0 and judge["scoring"] == ("original" if original else "redvillm")
    assert results["protocol"]["name"] == "videochatgpt" and results["protocol"]["official_request"]["model"] == \
        "gpt-3.5-turbo"
    assert any("'gpt-3.5-turbo-0125' instead of the script's 'gpt-3.5-turbo'" in d for d in results["deviations"])
    assert any(("int() truncation" in d) == original for d in results["deviations"] if "int()" in d)
    assert results["comparable_with_paper"]["comparable"] is True
    assert results["input"]["ids_from_position"] == 4 and judge["judge"]["parameters"] == {}


def test_dry_run_writes_the_exact_bodies_and_sends_nothing(layout, recorder, tmp_path):
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps(ODD, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "r.json"
    summary = run_judge(JudgeConfig(str(preds), "qa", str(out), protocol="videochatgpt",
                                    official_scripts=str(layout), dry_run=2))
    lines = [json.loads(x) for x in (tmp_path / "r.requests.jsonl").read_text(encoding="utf-8").splitlines()]
    assert summary["requests"] == 2 and len(lines) == 2 and Recorder.bodies == [] and not out.exists()
    assert lines[1]["body"] == {"model": "gpt-3.5-turbo",
                                "messages": messages_the_script_sends(layout, "qa", ODD[1], tmp_path / "o")["messages"]}


def test_our_protocol_is_not_comparable_and_says_why(recorder, tmp_path):
    preds = tmp_path / "msvd_preds.json"
    preds.write_text(json.dumps(ODD[:1]), encoding="utf-8")
    results = run_judge(JudgeConfig(str(preds), "qa", str(tmp_path / "r.json"), judge_url=recorder,
                                    judge_model="gpt-3.5-turbo-0125"))
    verdict = results["comparable_with_paper"]
    assert verdict["comparable"] is False and "redvillm protocol" in verdict["why"]
    user = Recorder.bodies[0]["messages"][1]["content"]
    assert "  What happens first?  " in user and " He walks in. " in user  # not stripped in ours either
    assert Recorder.bodies[0]["temperature"] == 0


@pytest.mark.parametrize("reply, criterion, expected", [
    ("{'pred': 'yes', 'score': 4.8}", "qa", (4.0, "yes")),  # int() truncation
    ("{'pred': 'Yes, mostly', 'score': 3}", "qa", (3.0, "yes")),  # substring rule
    ("{'pred': 'not really', 'score': 1}", "qa", (1.0, "no")),  # "no" inside "not"
    ("{'pred': 'maybe', 'score': 2}", "qa", (2.0, "neither")),  # scored, not in the accuracy
    ("{'score': 7}", "ci", (7.0, None)),  # no range check in the original
    ("{'score': '3'}", "tu", (3.0, None)),  # int('3')
    ('Sure: {"score": 4}', "ci", None),  # the whole reply must be a literal
    ("{'score': '4.5'}", "ci", None),  # int('4.5') raises in their aggregation
    ("{'pred': 'yes'}", "qa", None),
    ("{'pred': 1, 'score': 2}", "qa", None),
])
def test_original_scoring_reads_replies_as_the_scripts_do(reply, criterion, expected):
    from redvillm.evaluate.judge import parse_original

    verdict = parse_original(reply, criterion)
    assert (None if verdict is None else (verdict.score, verdict.pred)) == expected


def test_original_accuracy_is_yes_over_yes_plus_no(layout, recorder, tmp_path):
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps(ODD[:2]), encoding="utf-8")
    Recorder.reply = "{'pred': 'unsure', 'score': 2.9}"
    try:
        first = run_judge(JudgeConfig(str(preds), "qa", str(tmp_path / "r.json"), judge_url=recorder,
                                      judge_model="m", protocol="videochatgpt", official_scripts=str(layout),
                                      original_scoring=True))
    finally:
        Recorder.reply = "{'pred': 'yes', 'score': 4.8}"
    assert first["judge"]["counts"]["judged"] == 2 and first["judge"]["accuracy"] is None
    assert first["judge"]["mean_score"] == 2.0
