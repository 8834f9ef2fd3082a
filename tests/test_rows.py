"""The one reader of users' JSON / JSONL row files: the same rules and messages for every caller."""

import json

import pytest

from redvillm.train.annotations import read_instructions
from redvillm.errors import UserError
from redvillm.evaluate.judge.rows import read_prediction_file
from redvillm.evaluate.questions import read_questions
from redvillm.journal import read_journal
from redvillm.rows import read_rows

TRAIN = {"video_id": "v", "q": "Q?", "a": "A."}
EVAL = {"video_name": "v", "question": "Q?", "answer": "A."}
PRED = {"video_name": "v", "Q": "Q?", "A": "A.", "pred": "A."}
# Every reader of a user's rows, with one good row of its format.
READERS = [(read_instructions, TRAIN), (lambda path: read_questions(path).questions, EVAL)]


def read_error(read, path) -> str:
    with pytest.raises(UserError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


def rows_of(path, **kwargs):
    return read_rows(path, "rows", "give a list of rows", ("k",), **kwargs)


@pytest.mark.parametrize("read, row", READERS)
def test_a_row_of_a_wrapped_list_is_named_with_its_line(tmp_path, read, row):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": [row, {**row, "q": 5, "question": 5}]}, indent=2), encoding="utf-8")
    line = len(json.dumps({"data": [row]}, indent=2).splitlines()) - 1  # where "]" was
    assert read_error(read, path).startswith(f"row 1 (line {line}): ")


@pytest.mark.parametrize("read, row", READERS)
def test_non_utf8_names_the_line_of_the_bad_byte(tmp_path, read, row):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join([json.dumps(row).encode()] * 2 + [json.dumps(row).encode()[:-2] + b'\xe9"}']))
    assert read_error(read, path).startswith("line 3: not UTF-8 text (byte ")


@pytest.mark.parametrize("read, row", READERS)
def test_a_bom_at_the_start_of_any_jsonl_line_is_tolerated(tmp_path, read, row):
    path = tmp_path / "cat.jsonl"  # two copies joined with cat, each saved with a BOM
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n\xef\xbb\xbf" + json.dumps(row).encode() + b"\n")
    assert [item.row for item in read(path)] == [0, 1]


@pytest.mark.parametrize("read, row", READERS)
def test_a_damaged_last_line_is_an_error_not_a_torn_write(tmp_path, read, row):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row)[:-5], encoding="utf-8")
    assert read_journal(path) == [row]  # a log would skip it: a kill tore it
    assert read_error(read, path).startswith("line 2: not valid JSON (")  # a user's file: say so


@pytest.mark.parametrize("read, row", READERS)
def test_a_lone_object_without_a_row_field_is_not_a_row(tmp_path, read, row):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"version": 1, "rows": []}, indent=2), encoding="utf-8")
    assert read_error(read, path).startswith("the top level is an object with keys rows, version, not a list")


@pytest.mark.parametrize("read, row", READERS)
def test_a_lone_row_object_on_one_line_is_a_jsonl_file(tmp_path, read, row):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({**row, "q": "", "question": ""}), encoding="utf-8")
    assert read_error(read, path).startswith("line 1: ")
    path.write_text(json.dumps({**row, "q": "", "question": ""}, indent=2), encoding="utf-8")
    assert read_error(read, path).startswith("row 0 (the only object): ")


@pytest.mark.parametrize("read, row", READERS)
def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path, read, row):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n\n[1, 2]\n", encoding="utf-8")
    assert read_error(read, path).startswith("line 3: expected an object, got a list")


@pytest.mark.parametrize("read, row", READERS)
def test_an_empty_list_is_refused_by_name(tmp_path, read, row):
    path = tmp_path / "rows.json"
    path.write_text('{"data": []}', encoding="utf-8")
    assert "in this file (an empty list)" in read_error(read, path)


def test_rows_are_positions_in_a_list_and_lines_in_jsonl(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text('[\n {"k": 1},\n\n {"k": 2}]', encoding="utf-8")
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"k": 1}\r\n\r\n  \n{"k": 2}\r\n', encoding="utf-8")  # CRLF from Windows too
    got = rows_of(listed)
    assert (got.form, got.rows, got.where(1)) == ("json list", [(0, {"k": 1}), (1, {"k": 2})], "row 1 (line 4)")
    got = rows_of(lines)
    assert (got.form, got.rows, got.where(3)) == ("jsonl", [(0, {"k": 1}), (3, {"k": 2})], "line 4")


def test_the_row_hint_follows_a_non_object_row(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[{"k": 1}, "k"]', encoding="utf-8")
    with pytest.raises(UserError, match=r"row 1 \(line 1\): expected an object, got a string; rows need k$"):
        rows_of(path, row_hint="rows need k")


@pytest.mark.parametrize("content, match", [
    (b"\xef\xbb\xbf" + json.dumps([PRED]).encode(), None),
    (b"[" + json.dumps(PRED).encode() + b",\n 7]", r"row 1 \(line 2\): expected an object, got a number"),
    (b"[" + json.dumps(PRED).encode() + b",\n {]", r"line 2: not valid JSON"),
    (b"[" + json.dumps(PRED).encode()[:-2] + b'\xe9"}]', r"line 1: not UTF-8 text"),
])
def test_a_peer_prediction_list_is_read_by_the_same_rules(tmp_path, content, match):
    path = tmp_path / "pred.json"
    path.write_bytes(content)
    if match is None:
        assert read_prediction_file(path).rows == [{**PRED, "question_id": "row0"}]
        return
    with pytest.raises(UserError, match=rf"^{path}: {match}"):
        read_prediction_file(path)
