"""Training instructions (VideoInstruct-100K and its copies) read into one row type.

Accepted forms, detected from the content (the extension is not trusted: copies of these
files are often JSONL named .json or the reverse):

    VideoInstruct-100K   a JSON list of {"video_id", "q", "a"}; unknown fields are ignored
    conversation form    Video-ChatGPT's converted rows:
                         {"id", "video": "<id>.pkl", "conversations": [
                             {"from": "human", "value": "<q>\\n<video>"},
                             {"from": "gpt", "value": "<a>"}, ...]}
                         the <video> tag may come before or after the question; every
                         human -> gpt pair is one Instruction of the same video
    JSONL                one object per line, in either form (blank lines allowed)
    wrapper              {"<any key>": [rows]}: an object holding the list under one key

Video ids are what stage one calls a video: the file name without its extension
(`redvillm-extract` names videos by file stem), so ids copied with ".mp4" / ".pkl" still match
the cache. Question and answer lose only their surrounding whitespace (and the <video> tag);
the text is otherwise kept byte for byte, any UTF-8, with or without a BOM.

Nothing is dropped silently: a row that cannot give a complete instruction stops the read with
a one-line UserError naming the file, the row (and line), what is wrong and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redvillm.errors import UserError
from redvillm.extract.videos import VIDEO_EXTENSIONS

# Extensions seen on ids in circulating copies: the video files themselves, plus the feature
# files of Video-ChatGPT (.pkl) and friends. Only these are cut from a `video_id`/`id` field,
# so an id that merely contains a dot is left alone.
ID_EXTENSIONS = frozenset(VIDEO_EXTENSIONS | {".pkl", ".npy", ".npz", ".pt", ".pth", ".h5"})
# The `video` field is a file name by definition, so any short extension is cut from it.
_ANY_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_VIDEO_TAG = re.compile(r"\s*<video>\s*")
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, for locating rows in the text

HUMAN_ROLES = frozenset({"human", "user"})
GPT_ROLES = frozenset({"gpt", "assistant"})
FIELDS = {"video_id": "video id", "q": "question", "a": "answer"}  # of the VideoInstruct form
LABELS = {**FIELDS, "video": "video file name", "id": "video id"}  # for messages
ROW_HINT = "each row needs video_id, q, a (or video + conversations)"
FORM_HINT = "give a JSON list of {video_id, q, a} objects, or JSONL with one object per line"


@dataclass(frozen=True)
class Instruction:
    video_id: str
    question: str
    answer: str
    row: int  # 0-based position in the file (line number - 1 for JSONL), for errors / provenance


class _RowError(Exception):
    """What is wrong with one row; read_instructions adds the file and where."""


def read_instructions(path: str | Path) -> list[Instruction]:
    """Read training instructions in any of the accepted forms; UTF-8."""
    path = Path(path)
    text = _read_text(path)
    rows, locate = _rows(path, text)
    instructions: list[Instruction] = []
    for row, obj in rows:
        try:
            instructions.extend(_parse_row(obj, row))
        except _RowError as err:
            raise UserError(one_line(f"{path}: {locate(row)}: {err}")) from None
    if not instructions:
        raise UserError(f"{path}: no instructions in this file; {FORM_HINT}")
    return instructions


def summarize(instructions: Iterable[Instruction]) -> dict:
    """Counts for a log line or a results file: {"instructions": n, "videos": distinct ids}."""
    instructions = list(instructions)
    return {"instructions": len(instructions), "videos": len({i.video_id for i in instructions})}


# --- the file: text, then rows -----------------------------------------------------------

def _read_text(path: Path) -> str:
    if path.is_dir():
        raise UserError(f"{path}: is a folder; pass the training instructions file (.json or .jsonl)")
    if not path.exists():
        raise UserError(f"{path}: no such file; pass the training instructions file (.json or .jsonl)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: editors on Windows add a BOM
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; {FORM_HINT}")
    return text


Rows = list[tuple[int, Any]]


def _rows(path: Path, text: str) -> tuple[Rows, Callable[[int], str]]:
    """(row, object) pairs and how to name a row's place in an error message."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # A JSONL file is not one JSON document; its first line is a complete object.
        if first_line_is_object(text):
            return _jsonl_rows(path, text)
        raise UserError(one_line(f"{path}: line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}); "
                                  f"{FORM_HINT}")) from None
    if isinstance(data, list):
        return list(enumerate(data)), lambda row: f"row {row} (line {_line_of_row(text, row)})"
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        return list(enumerate(next(iter(data.values())))), lambda row: f"row {row}"
    if isinstance(data, dict) and ("conversations" in data or data.keys() & FIELDS.keys()):
        if len(text.strip().split("\n")) == 1:
            return _jsonl_rows(path, text)  # a one-line JSONL file is also one JSON document
        return [(0, data)], lambda row: "row 0 (the only object)"
    found = f"an object with keys {keys_of(data)}" if isinstance(data, dict) else kind_of(data)
    raise UserError(one_line(f"{path}: the top level is {found}, not a list of rows; {FORM_HINT}"))


def first_line_is_object(text: str) -> bool:
    first = next(line for line in text.split("\n") if line.strip())
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _jsonl_rows(path: Path, text: str) -> tuple[Rows, Callable[[int], str]]:
    rows = []
    # split("\n"), not splitlines(): U+2028 and friends are legal inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number - 1, json.loads(line)))
        except json.JSONDecodeError as err:
            raise UserError(one_line(f"{path}: line {number}: not valid JSON ({err.msg}, column {err.colno}); "
                                      "JSONL needs one complete object per line")) from None
    return rows, lambda row: f"line {row + 1}"


def _line_of_row(text: str, row: int) -> int:
    """Line where element `row` of a top-level JSON list starts (only called on an error).

    The text already parsed as a list, so stepping over elements with raw_decode is safe.
    """
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text, _WHITESPACE.match(text, 0).end() + 1).end()  # past "["
    for _ in range(row):
        _, pos = decoder.raw_decode(text, pos)
        pos = _WHITESPACE.match(text, pos).end() + 1  # past ","
        pos = _WHITESPACE.match(text, pos).end()
    return text.count("\n", 0, pos) + 1


# --- one row -> instructions ---------------------------------------------------------------

def _parse_row(obj: Any, row: int) -> list[Instruction]:
    if not isinstance(obj, dict):
        raise _RowError(f"expected an object, got {kind_of(obj)}; {ROW_HINT}")
    if "conversations" in obj:
        return _from_conversation(obj, row)
    video_id = strip_extension(_text_field(obj, "video_id"), ID_EXTENSIONS)
    if not video_id:
        raise _RowError('"video_id" is only a file extension; give the video file name without extension')
    return [Instruction(video_id, _text_field(obj, "q"), _text_field(obj, "a"), row)]


def _text_field(obj: dict, key: str) -> str:
    """A required, non-empty string field, without surrounding whitespace."""
    what = LABELS[key]
    if key not in obj:
        raise _RowError(f'missing "{key}" ({what}); {ROW_HINT}; this row has: {keys_of(obj)}')
    value = obj[key]
    if not isinstance(value, str):
        raise _RowError(f'"{key}" ({what}) must be a string, got {kind_of(value)}')
    if not value.strip():
        raise _RowError(f'empty "{key}" ({what}); {ROW_HINT}, none of them empty')
    return value.strip()


def _from_conversation(obj: dict, row: int) -> list[Instruction]:
    video_id = _conversation_video_id(obj)
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        raise _RowError('"conversations" must be a non-empty list of {"from", "value"} turns')
    instructions: list[Instruction] = []
    pending: tuple[int, str] | None = None  # (turn index, question) awaiting its gpt reply
    for i, turn in enumerate(turns):
        human, value = _turn(turn, i)
        if human and pending is not None:
            raise _RowError(f"conversations[{i}]: two human turns in a row; each human turn needs a gpt reply")
        if human:
            question = _VIDEO_TAG.sub(" ", value).strip()
            if not question:
                raise _RowError(f"conversations[{i}]: the human turn has no question besides the <video> tag")
            pending = (i, question)
        elif pending is None:
            raise _RowError(f"conversations[{i}]: gpt reply without a human question before it")
        else:
            instructions.append(Instruction(video_id, pending[1], value.strip(), row))
            pending = None
    if pending is not None:
        raise _RowError(f"conversations[{pending[0]}]: human turn without a gpt reply; "
                        "every question needs a gpt answer after it")
    return instructions


def _turn(turn: Any, i: int) -> tuple[bool, str]:
    """(is the human speaking, the non-empty text) of one conversation turn."""
    if not isinstance(turn, dict):
        raise _RowError(f'conversations[{i}]: expected {{"from", "value"}}, got {kind_of(turn)}')
    role = turn.get("from")
    if not isinstance(role, str) or role.strip().lower() not in HUMAN_ROLES | GPT_ROLES:
        raise _RowError(f'conversations[{i}]: "from" is {json.dumps(role, ensure_ascii=False)}; '
                        'expected "human" or "gpt"')
    value = turn.get("value")
    if not isinstance(value, str) or not value.strip():
        problem = "empty" if isinstance(value, str) else "missing" if value is None else f"a {kind_of(value)}"
        raise _RowError(f'conversations[{i}]: "value" is {problem}; each turn needs its text in "value"')
    return role.strip().lower() in HUMAN_ROLES, value


def _conversation_video_id(obj: dict) -> str:
    """The `video` file name without directory and extension, else the `id`."""
    if "video" in obj:
        name = _text_field(obj, "video").replace("\\", "/").rsplit("/", 1)[-1]
        video_id = _ANY_EXTENSION.sub("", name)
    elif "id" in obj:
        video_id = strip_extension(_text_field(obj, "id"), ID_EXTENSIONS)
    else:
        raise _RowError(f'missing "video" (video file name) and "id"; a conversation row needs one of them; '
                        f'this row has: {keys_of(obj)}')
    if not video_id:
        raise _RowError("the video name is only a file extension; give the video file name")
    return video_id


def strip_extension(name: str, extensions: frozenset[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    return stem if dot and f".{ext.lower()}" in extensions else name


# --- message helpers -----------------------------------------------------------------------

def kind_of(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def keys_of(obj: dict) -> str:
    keys = sorted(map(str, obj))
    return ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") if keys else "no fields"


def one_line(message: str) -> str:
    # Messages quote keys and values from the file, which may hold newlines.
    return " ".join(message.splitlines())
