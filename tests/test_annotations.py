"""Training instructions: every accepted form reads to the same rows; bad input is one clear line."""

import json
import re

import pytest

from redvillm.train.annotations import Instruction, read_instructions
from redvillm.errors import UserError


def write_json(path, data, **kwargs):
    path.write_text(json.dumps(data, ensure_ascii=False, **kwargs), encoding="utf-8")
    return path


def write_jsonl(path, rows, blank_lines=False):
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    sep = "\n\n   \n" if blank_lines else "\n"
    path.write_text(sep.join(lines) + "\n", encoding="utf-8")
    return path


def conversation(video, *turns, **extra):
    roles = ["human", "gpt"] * len(turns)
    return {"id": "ignored", "video": video, **extra,
            "conversations": [{"from": r, "value": v} for r, v in zip(roles, turns)]}


QA = [
    {"video_id": "v_abc", "q": "What happens?", "a": "A man runs.", "tag": "summary"},
    {"video_id": "v_abc", "q": "Who runs?", "a": "A man."},
    {"video_id": "v_xyz", "q": "Colour?", "a": "Red.", "extra": {"nested": [1, 2]}},
]
EXPECTED = [
    Instruction("v_abc", "What happens?", "A man runs.", 0),
    Instruction("v_abc", "Who runs?", "A man.", 1),
    Instruction("v_xyz", "Colour?", "Red.", 2),
]


# --- accepted forms --------------------------------------------------------------------------

def test_videoinstruct_list_ignores_unknown_fields(tmp_path):
    assert read_instructions(write_json(tmp_path / "qa.json", QA, indent=2)) == EXPECTED


def test_video_id_loses_whitespace_and_known_extensions(tmp_path):
    rows = [{"video_id": vid, "q": "q?", "a": "a."}
            for vid in [" v_abc.mp4 ", "v_abc.PKL", "v_abc.mkv", "v_abc", "clip.2024", "v_a-b_c"]]
    ids = [i.video_id for i in read_instructions(write_json(tmp_path / "qa.json", rows))]
    # an unknown "extension" is part of the id: stage one only sees real video files
    assert ids == ["v_abc", "v_abc", "v_abc", "v_abc", "clip.2024", "v_a-b_c"]


def test_question_and_answer_lose_only_surrounding_whitespace(tmp_path):
    rows = [{"video_id": "v", "q": "  line one\nline two  ", "a": "\n  an  answer \n"}]
    [inst] = read_instructions(write_json(tmp_path / "qa.json", rows))
    assert (inst.question, inst.answer) == ("line one\nline two", "an  answer")


@pytest.mark.parametrize("human", ["What happens?\n<video>", "<video>\nWhat happens?",
                                   "  <video>  What happens?  ", "What happens? <video>"])
def test_conversation_video_tag_before_or_after(tmp_path, human):
    path = write_json(tmp_path / "conv.json", [conversation("v_abc.pkl", human, "A man runs.")])
    assert read_instructions(path) == [Instruction("v_abc", "What happens?", "A man runs.", 0)]


def test_conversation_multi_turn_gives_one_instruction_per_pair(tmp_path):
    rows = [conversation("v_abc.pkl", "<video>\nQ1?", "A1.", "Q2?", "A2.", "Q3?", "A3."),
            conversation("v_xyz.pkl", "Q4?\n<video>", "A4.")]
    got = read_instructions(write_json(tmp_path / "conv.json", rows))
    assert got == [Instruction("v_abc", "Q1?", "A1.", 0), Instruction("v_abc", "Q2?", "A2.", 0),
                   Instruction("v_abc", "Q3?", "A3.", 0), Instruction("v_xyz", "Q4?", "A4.", 1)]


@pytest.mark.parametrize("video, expected", [
    ("v_abc.pkl", "v_abc"), ("v_abc.mp4", "v_abc"), ("v_abc.webm", "v_abc"), ("v_abc", "v_abc"),
    ("features/v_abc.pkl", "v_abc"), ("C:\\data\\v_abc.mkv", "v_abc"), (" v_abc.pkl ", "v_abc"),
])
def test_conversation_video_id_is_the_file_stem(tmp_path, video, expected):
    path = write_json(tmp_path / "conv.json", [conversation(video, "<video>\nQ?", "A.")])
    assert read_instructions(path)[0].video_id == expected


def test_conversation_falls_back_to_id(tmp_path):
    row = conversation("x", "<video>\nQ?", "A.", id="v_fallback.mp4")
    del row["video"]
    assert read_instructions(write_json(tmp_path / "conv.json", [row]))[0].video_id == "v_fallback"


def test_conversation_roles_are_case_and_alias_tolerant(tmp_path):
    row = {"video": "v.pkl", "conversations": [{"from": "Human", "value": "<video>\nQ?"},
                                              {"from": "assistant", "value": "A."}]}
    assert read_instructions(write_json(tmp_path / "c.json", [row])) == [Instruction("v", "Q?", "A.", 0)]


def test_both_forms_read_to_the_same_instructions(tmp_path):
    conv = [conversation(f"{r['video_id']}.pkl", f"{r['q']}\n<video>", r["a"]) for r in QA]
    assert read_instructions(write_json(tmp_path / "conv.json", conv)) == EXPECTED


def test_jsonl_with_blank_lines_mixed_forms_and_line_based_rows(tmp_path):
    rows = [QA[0], conversation("v_conv.pkl", "<video>\nQ?", "A.")]
    got = read_instructions(write_jsonl(tmp_path / "train.jsonl", rows, blank_lines=True))
    # the second object is on line 4 (two blank lines between): row = line - 1
    assert got == [EXPECTED[0], Instruction("v_conv", "Q?", "A.", 3)]


def test_bom_is_tolerated_in_json_and_jsonl(tmp_path):
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(QA).encode())
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(map(json.dumps, QA)).encode())
    assert read_instructions(tmp_path / "a.json") == EXPECTED
    assert [i.video_id for i in read_instructions(tmp_path / "b.jsonl")] == ["v_abc", "v_abc", "v_xyz"]


def test_chinese_and_other_utf8_text_round_trips(tmp_path):
    rows = [{"video_id": "v_中文", "q": "视频里发生了什么？", "a": "一个男人在跑步。😀 café"},
            # U+2028 is legal raw inside a JSON string and must not split a JSONL line
            {"video_id": "v_2", "q": "第二个问题\u2028续", "a": "答案"}]
    for path in [write_json(tmp_path / "zh.json", rows), write_jsonl(tmp_path / "zh.jsonl", rows)]:
        got = read_instructions(path)
        assert [(i.video_id, i.question, i.answer) for i in got] == [
            (r["video_id"], r["q"], r["a"]) for r in rows]
    # also when the file escapes non-ASCII (json.dumps' default)
    (tmp_path / "esc.json").write_text(json.dumps(rows), encoding="ascii")
    assert read_instructions(tmp_path / "esc.json")[0].answer == rows[0]["a"]


def test_form_is_detected_from_content_not_extension(tmp_path):
    assert read_instructions(write_jsonl(tmp_path / "actually_jsonl.json", QA)) == [
        Instruction(i.video_id, i.question, i.answer, i.row) for i in EXPECTED]
    assert read_instructions(write_json(tmp_path / "actually_list.jsonl", QA, indent=1)) == EXPECTED
    assert read_instructions(write_json(tmp_path / "no_extension", QA)) == EXPECTED


def test_single_object_and_wrapped_list(tmp_path):
    assert read_instructions(write_jsonl(tmp_path / "one.jsonl", QA[:1])) == EXPECTED[:1]
    assert read_instructions(write_json(tmp_path / "wrapped.json", {"data": QA})) == EXPECTED
    assert read_instructions(write_json(tmp_path / "pretty.json", QA[0], indent=2)) == EXPECTED[:1]
    with pytest.raises(UserError, match=r'pretty\.json: row 0 \(the only object\): empty "a"'):
        read_instructions(write_json(tmp_path / "pretty.json", ok(a=""), indent=2))


# --- malformed input: one line naming the file, where, what and the fix ------------------

def read_error(path) -> str:
    with pytest.raises(UserError) as info:
        read_instructions(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


DROP = object()  # ok(a=DROP): the row without "a"


def ok(**overrides):
    row = {"video_id": "v", "q": "Q?", "a": "A.", **overrides}
    return {k: v for k, v in row.items() if v is not DROP}


def test_missing_file_and_folder(tmp_path):
    assert "no such file" in read_error(tmp_path / "nope.json")
    assert "is a folder" in read_error(tmp_path)


@pytest.mark.parametrize("content, match", [
    ("", "empty"), ("  \n\n ", "empty"), ("[]", r"no training instructions in this file \(an empty list\)"),
    ('{"data": []}', "no training instructions"),
    ("video_id,q,a\nv,Q?,A.\n", r"line 1: not valid JSON"),
    ('"just a string"', "top level is a string"), ("42", "top level is a number"),
    ('{"version": 1, "rows": []}', "top level is an object with keys rows, version"),
])
def test_not_a_list_of_rows(tmp_path, content, match):
    path = tmp_path / "qa.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=match):
        read_instructions(path)
    read_error(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "qa.json"
    path.write_bytes(json.dumps(QA).encode()[:-10] + "é\"}]".encode("latin-1"))
    assert "not UTF-8" in read_error(path)


def test_broken_json_list_names_the_line(tmp_path):
    path = tmp_path / "qa.json"
    text = json.dumps(QA, indent=2)
    path.write_text(text.replace('"Who runs?",', '"Who runs?"'), encoding="utf-8")
    line = text.splitlines().index('    "q": "Who runs?",') + 2  # the error is at the next key
    with pytest.raises(UserError, match=rf"qa\.json: line {line}: not valid JSON \(Expecting ',' delimiter"):
        read_instructions(path)


def test_broken_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(QA[0]) + "\n\n" + '{"video_id": "v", "q": "Q?" "a": "A."}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"train\.jsonl: line 3: not valid JSON \(Expecting ','"):
        read_instructions(path)


@pytest.mark.parametrize("bad_row, match", [
    (ok(a=DROP), r'missing "a" \(answer\); each row needs video_id, q, a'),
    (ok(q=DROP), r'missing "q" \(question\)'),
    (ok(video_id=DROP), r'missing "video_id" \(video id\)'),
    ({"video_name": "v", "question": "Q?", "answer": "A."}, r"this row has: answer, question, video_name"),
    (ok(a=""), r'empty "a" \(answer\)'),
    (ok(q="   \n"), r'empty "q" \(question\)'),
    (ok(video_id=" "), r'empty "video_id"'),
    (ok(video_id=".mp4"), r"only a file extension"),
    (ok(a=3), r'"a" \(answer\) must be a string, got a number'),
    (ok(video_id=None), r'"video_id" \(video id\) must be a string, got null'),
    (ok(q=["Q?"]), r'"q" \(question\) must be a string, got a list'),
    (["v", "Q?", "A."], r"expected an object, got a list"),
    ("v_abc", r"expected an object, got a string"),
])
def test_bad_row_in_a_list_names_row_and_line(tmp_path, bad_row, match):
    path = write_json(tmp_path / "qa.json", [QA[0], QA[1], bad_row], indent=2)
    line = len(json.dumps(QA[:2], indent=2).splitlines())  # the bad row starts where "]" was
    message = read_error(path)
    assert message.startswith(f"{path}: row 2 (line {line}): ") and line == 13
    assert re.search(match, message)


@pytest.mark.parametrize("bad_row, match", [
    (conversation("v.pkl", "<video>\nQ?"), r"conversations\[0\]: human turn without a gpt reply"),
    (conversation("v.pkl", "<video>\nQ1?", "A1.", "Q2?"), r"conversations\[2\]: human turn without a gpt reply"),
    ({"video": "v.pkl", "conversations": [{"from": "gpt", "value": "A."}]}, r"gpt reply without a human question"),
    ({"video": "v.pkl", "conversations": [{"from": "human", "value": "Q1?"}, {"from": "human", "value": "Q2?"}]},
     r"conversations\[1\]: two human turns in a row"),
    ({"video": "v.pkl", "conversations": [{"from": "system", "value": "Be nice."}]},
     r'conversations\[0\]: "from" is "system"; expected "human" or "gpt"'),
    ({"video": "v.pkl", "conversations": [{"value": "Q?"}]}, r'"from" is null'),
    (conversation("v.pkl", "<video>", "A."), r"no question besides the <video> tag"),
    (conversation("v.pkl", "<video>\nQ?", "  "), r'conversations\[1\]: "value" is empty'),
    ({"video": "v.pkl", "conversations": [{"from": "human"}]}, r'"value" is missing'),
    ({"video": "v.pkl", "conversations": ["Q?", "A."]}, r'conversations\[0\]: expected \{"from", "value"\}'),
    ({"video": "v.pkl", "conversations": []}, r'"conversations" must be a non-empty list'),
    ({"video": "v.pkl", "conversations": "Q? A."}, r'"conversations" must be a non-empty list'),
    ({"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
     r'missing "video" \(video file name\) and "id"'),
    (conversation("", "<video>\nQ?", "A."), r'empty "video"'),
    (conversation(7, "<video>\nQ?", "A."), r'"video" \(video file name\) must be a string, got a number'),
])
def test_bad_conversation_in_jsonl_names_the_line(tmp_path, bad_row, match):
    path = tmp_path / "conv.jsonl"
    good = json.dumps(conversation("v_ok.pkl", "<video>\nQ?", "A."))
    path.write_text(f"{good}\n\n{good}\n{json.dumps(bad_row)}\n{good}\n", encoding="utf-8")
    message = read_error(path)
    assert message.startswith(f"{path}: line 4: ")
    assert re.search(match, message)


def test_bad_row_in_wrapped_list_names_row_and_line(tmp_path):
    path = write_json(tmp_path / "wrapped.json", {"data": [QA[0], ok(a="")]}, indent=2)
    line = len(json.dumps({"data": [QA[0]]}, indent=2).splitlines()) - 1  # the bad row starts where "]" was
    with pytest.raises(UserError, match=rf'wrapped\.json: row 1 \(line {line}\): empty "a"'):
        read_instructions(path)


def test_message_stays_one_line_when_the_file_has_odd_keys(tmp_path):
    path = write_json(tmp_path / "qa.json", [{"video_id": "v", "q": "Q?", "odd\nkey": 1}])
    assert 'missing "a"' in read_error(path)
