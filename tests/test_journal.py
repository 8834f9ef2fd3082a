"""Append-only JSON-lines files: a kill mid-write leaves a torn tail that readers skip and appenders cut."""

import pytest

from redvillm.errors import UserError
from redvillm.journal import append_journal, read_journal


def test_torn_final_line_is_skipped_then_cut_before_the_next_append(tmp_path):
    path = tmp_path / "log.jsonl"
    append_journal(path, [{"step": 1}, {"text": "视频"}])
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "lo')  # killed mid-write
    assert read_journal(path) == [{"step": 1}, {"text": "视频"}]
    append_journal(path, [{"step": 3}])
    assert read_journal(path) == [{"step": 1}, {"text": "视频"}, {"step": 3}]
    assert path.read_text(encoding="utf-8").endswith('{"step": 3}\n')


def test_torn_tail_with_a_cut_multibyte_character(tmp_path):
    path = tmp_path / "log.jsonl"
    append_journal(path, [{"a": 1}])
    with open(path, "ab") as f:
        f.write('{"q": "视'.encode()[:-1])
    assert read_journal(path) == [{"a": 1}]


def test_damaged_line_before_the_last_names_file_and_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(UserError, match=r"log.jsonl:2: not a JSON line"):
        read_journal(path)


def test_missing_file_reads_empty(tmp_path):
    assert read_journal(tmp_path / "none.jsonl") == []
