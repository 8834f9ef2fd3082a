"""Rows of a JSON / JSONL input file a user gives us, with one set of rules and messages.

Used by the training instructions, the evaluation questions and answers, and peer prediction
lists. The form is detected from the content (copies are often JSONL named .json or the reverse):

    JSON list      [{...}, {...}]              row = 0-based position; messages say "row 3 (line 17)"
    wrapped list   {"<one key>": [{...}, ...]} same, the line found inside the wrapper
    one object     {...}  holding a row field  one row; on a single line it is a one-line JSONL file
    JSONL          one object per line         row = line - 1; messages say "line 4"

Rules: UTF-8, with or without a BOM (also at the start of any JSONL line, as concatenated
copies have); blank lines are allowed in JSONL; every row must be an object; an empty file or
an empty list is refused. Lines are split on "\\n" only, since U+2028 is legal inside JSON text.

These are files users write or download, not our logs: a line that is not valid JSON is an
error naming its line, wherever it is, including the last line. Append-only logs that a kill
may leave with a torn last line are read by `redvillm.journal` instead, which skips that line.

Every problem is a one-line UserError: the file, the row or line, what is wrong and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from redvillm.errors import UserError

_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_BOM = "\ufeff"
T = TypeVar("T")


class RowError(Exception):
    """What is wrong with one row; `Rows.collect` / `Rows.error` add the file and where."""


@dataclass(frozen=True)
class Rows:
    path: Path
    rows: list[tuple[int, dict]]  # (row, object): row = position in the list, or line - 1 in JSONL
    form: str                     # "json list" | "wrapped list" | "object" | "jsonl"
    where: Callable[[int], str]   # how a message names a row: "row 3 (line 17)" or "line 4"

    def error(self, row: int, message: object) -> UserError:
        return UserError(one_line(f"{self.path}: {self.where(row)}: {message}"))

    def collect(self, parse: Callable[[dict, int], list[T]]) -> list[T]:
        """parse(object, row) for every row, concatenated; a RowError names its row and stops."""
        out: list[T] = []
        for row, obj in self.rows:
            try:
                out.extend(parse(obj, row))
            except RowError as err:
                raise self.error(row, err) from None
        return out


def read_rows(path: str | Path, what: str, hint: str, row_keys: Collection[str], row_hint: str = "") -> Rows:
    """The rows of a user's JSON / JSONL file (see the module docstring).

    `what` names the file's content in messages ("questions"); `hint` says how a valid file
    looks; `row_keys`: a lone top-level object is one row if it has one of these keys (else it
    is refused as not a list of rows); `row_hint` follows "expected an object" for a bad row.
    """
    path = Path(path)
    text = _read_text(path, what, hint)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if first_line_is_object(text):  # a JSONL file is not one JSON document
            return _jsonl(path, text, row_hint)
        raise UserError(one_line(f"{path}: line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}); "
                                 f"{hint}")) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        rows = Rows(path, list(enumerate(next(iter(data.values())))), "wrapped list",
                    _list_locator(text, _wrapped_list_start(text)))
    elif isinstance(data, list):
        rows = Rows(path, list(enumerate(data)), "json list", _list_locator(text, _skip(text, 0)))
    elif isinstance(data, dict) and data.keys() & set(row_keys):
        if len(text.strip().split("\n")) == 1:
            return _jsonl(path, text, row_hint)
        return Rows(path, [(0, data)], "object", lambda row: "row 0 (the only object)")
    else:
        found = f"an object with keys {keys_of(data)}" if isinstance(data, dict) else kind_of(data)
        raise UserError(one_line(f"{path}: the top level is {found}, not a list of rows; {hint}"))
    if not rows.rows:
        raise UserError(f"{path}: no {what} in this file (an empty list); {hint}")
    _check_objects(rows, row_hint)
    return rows


def first_line_is_object(text: str) -> bool:
    """Whether the first non-blank line of `text` is a whole JSON object (the mark of JSONL)."""
    first = next((line for line in text.split("\n") if line.strip()), "")
    try:
        return isinstance(json.loads(first.lstrip(_BOM)), dict)
    except json.JSONDecodeError:
        return False


# --- the file ------------------------------------------------------------------------------

def _read_text(path: Path, what: str, hint: str) -> str:
    if path.is_dir():
        raise UserError(f"{path}: is a folder; pass the {what} file (.json or .jsonl)")
    if not path.exists():
        raise UserError(f"{path}: no such file; pass the {what} file (.json or .jsonl)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    try:
        text = data.decode("utf-8-sig")  # -sig: editors on Windows add a BOM
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{path}: line {line}: not UTF-8 text (byte {err.start}: {err.reason}); "
                        "save the file as UTF-8") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; {hint}")
    return text


def _jsonl(path: Path, text: str, row_hint: str) -> Rows:
    parsed = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.lstrip(_BOM)
        if not line.strip():
            continue
        try:
            parsed.append((number - 1, json.loads(line)))
        except json.JSONDecodeError as err:
            raise UserError(one_line(f"{path}: line {number}: not valid JSON ({err.msg}, column {err.colno}); "
                                     "JSONL needs one complete object per line: fix or delete that line")) from None
    rows = Rows(path, parsed, "jsonl", lambda row: f"line {row + 1}")
    _check_objects(rows, row_hint)
    return rows


def _check_objects(rows: Rows, row_hint: str) -> None:
    for row, obj in rows.rows:
        if not isinstance(obj, dict):
            raise rows.error(row, f"expected an object, got {kind_of(obj)}" + (f"; {row_hint}" if row_hint else ""))


# --- where a row of a list starts (only worked out for a message) ---------------------------

def _skip(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()


def _wrapped_list_start(text: str) -> int:
    """Position of the "[" in a (parsed) {"key": [...]} document."""
    _, pos = json.JSONDecoder().raw_decode(text, _skip(text, _skip(text, 0) + 1))  # the key, past "{"
    return _skip(text, _skip(text, pos) + 1)  # past ":"


def _list_locator(text: str, start: int) -> Callable[[int], str]:
    """Names row i of the list whose "[" is at `start` with its line; lines found once, on first use."""
    lines: list[int] = []

    def where(row: int) -> str:
        if not lines:
            lines.extend(_row_lines(text, start))
        return f"row {row} (line {lines[row]})"
    return where


def _row_lines(text: str, start: int) -> list[int]:
    """Start line of every element of the (already parsed) list at `start`, in one pass."""
    decoder, lines, line, seen = json.JSONDecoder(), [], 1, 0
    pos = _skip(text, start + 1)  # past "["
    while pos < len(text) and text[pos] != "]":
        line, seen = line + text.count("\n", seen, pos), pos
        lines.append(line)
        _, pos = decoder.raw_decode(text, pos)
        pos = _skip(text, pos)
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
    return lines


# --- message helpers -----------------------------------------------------------------------

def kind_of(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def keys_of(obj: dict) -> str:
    keys = sorted(map(str, obj))
    return ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") if keys else "no fields"


def one_line(message: str) -> str:
    """Messages quote keys and values from the file, which may hold newlines."""
    return " ".join(message.splitlines())
