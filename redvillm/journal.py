"""Append-only JSON-lines files that survive a kill mid-write.

Every log redvillm appends to (extraction failures, the training log, predictions, judge
replies) is a journal: one JSON object per line, appended and flushed. A process killed while
writing leaves at most one torn final line (no newline, or not valid JSON). Readers skip that
line and appenders cut it off before writing, so a rerun or ``--resume`` continues where the
file is whole. A malformed line anywhere *before* the last one is not a torn write but a damaged
or hand-edited file: that is reported with its path and line number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from redvillm.errors import UserError


def read_journal(path: str | os.PathLike) -> list[dict]:
    """The whole records of `path` in order; a torn final line is ignored. Missing file: []."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: list[dict] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines) or (number == len(lines) - 1 and not lines[-1])
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if last:
                continue  # torn by a kill mid-write: the record was never complete
            raise UserError(f"{path}:{number}: not a JSON line (damaged or edited by hand); "
                            "fix or delete that line, then rerun") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: expected a JSON object per line")
        records.append(record)
    return records


def cut_torn_tail(path: str | os.PathLike) -> None:
    """Truncate a final line that lacks its newline, so the next append starts on a clean line."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        # Find the last newline (read backwards in blocks; torn lines are short).
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            end = start
        f.truncate(0)


def append_journal(path: str | os.PathLike, records: Iterable[dict], *, sync: bool = True) -> None:
    """Append whole lines; a torn tail left by an earlier kill is cut off first."""
    path = Path(path)
    cut_torn_tail(path)
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if sync:
            os.fsync(f.fileno())
