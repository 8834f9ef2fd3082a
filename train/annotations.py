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
    also                 JSONL (one object per line) in either form, an object holding the
                         list under one key, or a single row object; the file-level rules
                         (BOM, blank lines, where a row is named) are `redvillm.rows`'

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redvillm.extract.videos import VIDEO_EXTENSIONS
from redvillm.rows import RowError, keys_of, kind_of, read_rows

# Extensions seen on ids in circulating copies: the video files themselves, plus the feature
# files of Video-ChatGPT (.pkl) and friends. Only these are cut from a `video_id`/`id` field,
# so an id that merely contains a dot is left alone.
ID_EXTENSIONS = frozenset(VIDEO_EXTENSIONS | {".pkl", ".npy", ".npz", ".pt", ".pth", ".h5"})
# The `video` field is a file name by definition, so any short extension is cut from it.
_ANY_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_VIDEO_TAG = re.compile(r"\s*<video>\s*")

HUMAN_ROLES = frozenset({"human", "user"})
GPT_ROLES = frozenset({"gpt", "assistant"})
FIELDS = {"video_id": "video id", "q": "question", "a": "answer"}  # of the VideoInstruct form
LABELS = {**FIELDS, "video": "video file name", "id": "video id"}  # for messages
ROW_KEYS = frozenset(FIELDS) | {"conversations"}  # a lone top-level object with one of these is a row
ROW_HINT = "each row needs video_id, q, a (or video + conversations)"
FORM_HINT = "give a JSON list of {video_id, q, a} objects, or JSONL with one object per line"


@dataclass(frozen=True)
class Instruction:
    video_id: str
    question: str
    answer: str
    row: int  # 0-based position in the file (line number - 1 for JSONL), for errors / provenance


def read_instructions(path: str | Path) -> list[Instruction]:
    """Read training instructions in any of the accepted forms; UTF-8."""
    rows = read_rows(path, "training instructions", FORM_HINT, ROW_KEYS, ROW_HINT)
    return rows.collect(_parse_row)


# --- one row -> instructions ---------------------------------------------------------------

def _parse_row(obj: dict, row: int) -> list[Instruction]:
    if "conversations" in obj:
        return _from_conversation(obj, row)
    video_id = strip_extension(_text_field(obj, "video_id"), ID_EXTENSIONS)
    if not video_id:
        raise RowError('"video_id" is only a file extension; give the video file name without extension')
    return [Instruction(video_id, _text_field(obj, "q"), _text_field(obj, "a"), row)]


def _text_field(obj: dict, key: str) -> str:
    """A required, non-empty string field, without surrounding whitespace."""
    what = LABELS[key]
    if key not in obj:
        raise RowError(f'missing "{key}" ({what}); {ROW_HINT}; this row has: {keys_of(obj)}')
    value = obj[key]
    if not isinstance(value, str):
        raise RowError(f'"{key}" ({what}) must be a string, got {kind_of(value)}')
    if not value.strip():
        raise RowError(f'empty "{key}" ({what}); {ROW_HINT}, none of them empty')
    return value.strip()


def _from_conversation(obj: dict, row: int) -> list[Instruction]:
    video_id = _conversation_video_id(obj)
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        raise RowError('"conversations" must be a non-empty list of {"from", "value"} turns')
    instructions: list[Instruction] = []
    pending: tuple[int, str] | None = None  # (turn index, question) awaiting its gpt reply
    for i, turn in enumerate(turns):
        human, value = _turn(turn, i)
        if human and pending is not None:
            raise RowError(f"conversations[{i}]: two human turns in a row; each human turn needs a gpt reply")
        if human:
            question = _VIDEO_TAG.sub(" ", value).strip()
            if not question:
                raise RowError(f"conversations[{i}]: the human turn has no question besides the <video> tag")
            pending = (i, question)
        elif pending is None:
            raise RowError(f"conversations[{i}]: gpt reply without a human question before it")
        else:
            instructions.append(Instruction(video_id, pending[1], value.strip(), row))
            pending = None
    if pending is not None:
        raise RowError(f"conversations[{pending[0]}]: human turn without a gpt reply; "
                        "every question needs a gpt answer after it")
    return instructions


def _turn(turn: Any, i: int) -> tuple[bool, str]:
    """(is the human speaking, the non-empty text) of one conversation turn."""
    if not isinstance(turn, dict):
        raise RowError(f'conversations[{i}]: expected {{"from", "value"}}, got {kind_of(turn)}')
    role = turn.get("from")
    if not isinstance(role, str) or role.strip().lower() not in HUMAN_ROLES | GPT_ROLES:
        raise RowError(f'conversations[{i}]: "from" is {json.dumps(role, ensure_ascii=False)}; '
                        'expected "human" or "gpt"')
    value = turn.get("value")
    if not isinstance(value, str) or not value.strip():
        problem = "empty" if isinstance(value, str) else "missing" if value is None else f"a {kind_of(value)}"
        raise RowError(f'conversations[{i}]: "value" is {problem}; each turn needs its text in "value"')
    return role.strip().lower() in HUMAN_ROLES, value


def _conversation_video_id(obj: dict) -> str:
    """The `video` file name without directory and extension, else the `id`."""
    if "video" in obj:
        name = _text_field(obj, "video").replace("\\", "/").rsplit("/", 1)[-1]
        video_id = _ANY_EXTENSION.sub("", name)
    elif "id" in obj:
        video_id = strip_extension(_text_field(obj, "id"), ID_EXTENSIONS)
    else:
        raise RowError(f'missing "video" (video file name) and "id"; a conversation row needs one of them; '
                        f'this row has: {keys_of(obj)}')
    if not video_id:
        raise RowError("the video name is only a file extension; give the video file name")
    return video_id


def strip_extension(name: str, extensions: frozenset[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    return stem if dot and f".{ext.lower()}" in extensions else name
