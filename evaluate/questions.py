"""Evaluation questions of every public format read into one row type, `Question`.

Accepted forms, detected from the content of the first row. The file itself may be a JSON list,
JSONL with one object per line, an object holding the list under one key, or one row object
(the extension is not trusted; BOMs, blank lines and where a row is named: `redvillm.rows`):

    question/answer pair    ActivityNet-QA (and the MSVD/MSRVTT copies made the same way):
                            test_q.json rows {"video_name", "question_id", "question"} and
                            test_a.json rows {"answer", "type", "question_id"}, joined ON
                            question_id (never by position: reordered files stay right).
                            The answers file is `answers_path`, else found beside the questions
                            file by name (<x>_q.json -> <x>_a.json / .jsonl), else there is none
                            and every answer is None. `type` is ActivityNet's code
                            (0 motion, 1 spatial, 2 temporal, 3 yes_no, 4 color, 5 object,
                            6 location, 7 number, 8 other) or one of those names.
    one-file QA             MSVD-QA / MSRVTT-QA / TGIF-QA copies: rows holding a video, a
                            question and (in every row or in none) an answer. Field names:
                              video     video_name | video_id | video | gif_name
                              question  question | q | Q
                              answer    answer | a | A
                              id        question_id | qid | id      (optional)
                              type      qtype | type | answer_type  (optional, kept as text:
                                        integer codes stay "3", since the code tables differ
                                        between datasets, e.g. TGIF FrameQA's 0-3)
    generative benchmark    Video-ChatGPT's generic_qa.json / temporal_qa.json rows
                            {"video_name", "Q", "A"}: task "temporal" if the file name contains
                            "temporal", else "generic" (`task=` overrides; a one-file QA file
                            read with task="generic" works too).
                            consistency_qa.json rows {"video_name", "Q1", "Q2", "A"}: two
                            Questions per row, pair "q1" / "q2", same video and answer.

Question ids are stable across runs and do not depend on which videos are cached: the given
question id, else "<video>#<row>" (row = 0-based position, line - 1 for JSONL); the two
questions of a consistency row get "<id>/q1" and "<id>/q2". Ids must be unique in a file.

Video names become stage one's ids (the file stem): directories and video / feature file
extensions are cut, integers become text. With `video_ids` (the ids in the token cache) each
name is resolved by `resolve_video_id`; a question whose video is not cached is not an error:
it goes to `QuestionSet.missing_video` for the caller to count and list.

A row that cannot be read stops the read with a one-line UserError naming the file, the row
and the field. Join leftovers (a question without an answer row, an answer without a
question) are not fatal: they are skipped and described one per line in
`QuestionSet.unmatched`; if nothing joins at all the answers file is refused as the wrong one.
Text keeps any UTF-8 (Chinese included), losing only surrounding whitespace.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Callable, Container

from redvillm.train.annotations import ID_EXTENSIONS, strip_extension
from redvillm.errors import UserError
from redvillm.rows import RowError, Rows, keys_of, kind_of, one_line, read_rows

TASKS = ("qa", "generic", "temporal", "consistency")
ACTIVITYNET_TYPES = ("motion", "spatial", "temporal", "yes_no", "color", "object", "location", "number", "other")

VIDEO_KEYS = ("video_name", "video_id", "video", "gif_name")  # first present wins
QUESTION_KEYS = ("question", "q", "Q")
ANSWER_KEYS = ("answer", "a", "A")
QID_KEYS = ("question_id", "qid", "id")
TYPE_KEYS = ("qtype", "type", "answer_type")
PAIR_KEYS = {"q1": ("Q1", "q1"), "q2": ("Q2", "q2")}
# TGIF copies name the .gif itself; stage one needs it converted, keeping the stem.
NAME_EXTENSIONS = frozenset(ID_EXTENSIONS | {".gif"})
_ANY_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}$")
ROW_KEYS = (*VIDEO_KEYS, *QUESTION_KEYS, *ANSWER_KEYS, *QID_KEYS, *(k for keys in PAIR_KEYS.values() for k in keys))
ANSWER_ROW_HINT = "answer rows are {answer, type, question_id}"
FORM_HINT = ("give a JSON list (or JSONL) of {video_name, question, answer} rows, ActivityNet-QA's "
             "test_q.json, or Video-ChatGPT's {video_name, Q, A} / {video_name, Q1, Q2, A} rows")


@dataclass(frozen=True)
class Question:
    question_id: str    # unique in its file, stable across runs (see module docstring)
    video_id: str       # stage one's id (file stem), resolved against the cache when one is given
    question: str
    answer: str | None  # reference answer; None when the file has no answers
    task: str           # "qa" | "generic" | "temporal" | "consistency"
    qtype: str | None = None  # ActivityNet-QA answer type name (or the file's own type label)
    pair: str | None = None   # consistency: "q1" / "q2"
    row: int = 0              # 0-based row in the questions file (line - 1 for JSONL)


@dataclass
class QuestionSet:
    questions: list[Question]      # answerable: video cached (or no cache given)
    missing_video: list[Question]  # video not in `video_ids`; video_id left as read
    unmatched: list[str] = field(default_factory=list)  # skipped join leftovers, one line each
    answers_path: Path | None = None  # the answers file that was joined, if any

    @property
    def missing_video_ids(self) -> list[str]:
        return sorted({q.video_id for q in self.missing_video})


def read_questions(path: str | Path, answers_path: str | Path | None = None,
                   video_ids: Container[str] | None = None, task: str | None = None) -> QuestionSet:
    """Read evaluation questions of any accepted form; see the module docstring.

    `video_ids`: the cached ids (a set, or the TokenCache itself: only `in` is used).
    """
    path = Path(path)
    if task is not None and task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    rows = read_rows(path, "questions", FORM_HINT, ROW_KEYS)
    first = rows.rows[0][1]
    consistency = any(k in first for keys in PAIR_KEYS.values() for k in keys)
    if consistency:
        if task not in (None, "consistency"):
            raise UserError(f"{path}: rows hold Q1/Q2 pairs (consistency questions), not task {task!r}; "
                            "drop the task or pass a {video_name, Q, A} file")
        if answers_path is not None:
            raise UserError(f"{path}: consistency rows carry their answer \"A\"; drop the answers file")
        questions, unmatched, used = rows.collect(_consistency_row), [], None
    else:
        if task == "consistency":
            raise UserError(f"{path}: task consistency needs rows with Q1 and Q2; this file's first row has: "
                            f"{keys_of(first)}")
        questions, unmatched, used = _read_qa(rows, answers_path, task or _auto_task(path, first))
    _check_unique(rows, questions)
    if video_ids is None:
        return QuestionSet(questions, [], unmatched, used)
    return _split_by_video(questions, unmatched, used, video_ids)


def resolve_video_id(name: str, known: Container[str]) -> str | None:
    """The id in `known` that a question's video name means, else None.

    Tried in order: the name itself, "v_" + name (ActivityNet-QA names lack the prefix its
    files carry), the name without "v_", the same for the name's file stem, and for a bare
    number "video<n>" (MSRVTT-QA's integer ids vs. its video<n>.mp4 files). An exact match
    therefore wins over a prefixed one.
    """
    for candidate in _candidates(name):
        if candidate in known:
            return candidate
    return None


# --- forms -----------------------------------------------------------------------------------

def _auto_task(path: Path, first: dict) -> str:
    if "Q" in first and not any(k in first for k in ("question", "q")):
        return "temporal" if "temporal" in path.name.lower() else "generic"
    return "qa"


def _read_qa(rows: Rows, answers_path, task) -> tuple[list[Question], list[str], Path | None]:
    path, first = rows.path, rows.rows[0][1]
    if not _present(first, QUESTION_KEYS) and _present(first, ANSWER_KEYS):
        raise UserError(f"{path}: looks like an answers file (rows have {keys_of(first)}, no question); pass the "
                        "questions file and give this one as the answers file")
    with_answers = _present(first, ANSWER_KEYS) is not None
    if with_answers and answers_path is not None:
        raise UserError(f"{path}: rows already carry answers; drop the answers file {answers_path}")
    if not with_answers:
        answers_path = Path(answers_path) if answers_path is not None else _sibling_answers(path)
    joining = answers_path is not None
    questions = rows.collect(lambda obj, row: _qa_row(obj, row, task, with_answers, joining))
    if not joining:
        return questions, [], None
    joined, unmatched = _join(rows, questions, answers_path)
    return joined, unmatched, answers_path


def _qa_row(obj: dict, row: int, task: str, with_answers: bool, joining: bool) -> list[Question]:
    video = _video_name(obj)
    question = _text(obj, QUESTION_KEYS, "question", numbers=False, raw=True)
    if not with_answers and _present(obj, ANSWER_KEYS):
        raise RowError(f'has "{_present(obj, ANSWER_KEYS)}" but the first row has no answer; either every '
                        "row carries its answer or none does (then they come from an answers file)")
    answer = _text(obj, ANSWER_KEYS, "answer", raw=True) if with_answers else None
    qid = _text(obj, QID_KEYS, "question id (the key to the answers file)" if joining else "question id",
                required=joining)
    qtype = _text(obj, TYPE_KEYS, "question type", required=False)
    return [Question(qid or f"{video}#{row}", video, question, answer, task,
                     qtype.lower() if qtype else None, None, row)]


def _consistency_row(obj: dict, row: int) -> list[Question]:
    video = _video_name(obj)
    answer = _text(obj, ANSWER_KEYS, "answer", raw=True)
    qid = _text(obj, QID_KEYS, "question id", required=False) or f"{video}#{row}"
    return [Question(f"{qid}/{pair}", video, _text(obj, keys, f"question {pair[1]}", numbers=False, raw=True), answer,
                     "consistency", None, pair, row) for pair, keys in PAIR_KEYS.items()]


# --- the answers file and the join -------------------------------------------------------

def _sibling_answers(path: Path) -> Path | None:
    if not path.stem.endswith("_q"):
        return None
    stem = path.stem[:-2] + "_a"
    for suffix in dict.fromkeys((path.suffix, ".json", ".jsonl")):
        candidate = path.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _join(rows: Rows, questions: list[Question], answers_path: Path) -> tuple[list[Question], list[str]]:
    path, answers, where = rows.path, *_read_answers(answers_path)
    joined, unmatched, used = [], [], set()
    for q in questions:
        if q.question_id not in answers:
            unmatched.append(one_line(f"{path}: {rows.where(q.row)}: question_id {q.question_id} has no answer in "
                                       f"{answers_path.name}; skipped"))
            continue
        answer, qtype, _ = answers[q.question_id]
        used.add(q.question_id)
        joined.append(replace(q, answer=answer, qtype=qtype or q.qtype))
    for qid, (_, _, row) in answers.items():
        if qid not in used:
            unmatched.append(one_line(f"{answers_path}: {where(row)}: question_id {qid} has no question in "
                                       f"{path.name}; skipped"))
    if questions and not joined:
        raise UserError(f"{answers_path}: none of its {len(answers)} question ids matches one of the "
                        f"{len(questions)} questions in {path}; pass the answers file of these questions")
    return joined, unmatched


def _read_answers(path: Path) -> tuple[dict[str, tuple[str, str | None, int]], Callable[[int], str]]:
    """question_id -> (answer, type name, row) of an ActivityNet-style answers file, and how to name a row."""
    rows = read_rows(path, "answers", FORM_HINT, QID_KEYS + ANSWER_KEYS, ANSWER_ROW_HINT)
    answers: dict[str, tuple[str, str | None, int]] = {}
    for row, obj in rows.rows:
        try:
            qid = _text(obj, QID_KEYS, "question id")
            answer = _text(obj, ANSWER_KEYS, "answer", raw=True)
            qtype = _activitynet_type(obj)
        except RowError as err:
            raise rows.error(row, err) from None
        if qid in answers:
            raise rows.error(row, f"question_id {qid} repeats {rows.where(answers[qid][2])}; "
                                  "each question needs one answer row")
        answers[qid] = (answer, qtype, row)
    return answers, rows.where


def _activitynet_type(obj: dict) -> str | None:
    if "type" not in obj:
        return None
    code = obj["type"]
    if isinstance(code, str) and code.strip().lower().replace("/", "_") in ACTIVITYNET_TYPES:
        return code.strip().lower().replace("/", "_")
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < len(ACTIVITYNET_TYPES):
        return ACTIVITYNET_TYPES[code]
    raise RowError(f'"type" is {json.dumps(code, ensure_ascii=False)}; ActivityNet-QA codes are 0-8 '
                    f"({', '.join(f'{i} {n}' for i, n in enumerate(ACTIVITYNET_TYPES))})")


# --- fields ----------------------------------------------------------------------------------

def _present(obj: dict, keys) -> str | None:
    return next((k for k in keys if k in obj), None)


def _text(obj: dict, keys, what: str, required: bool = True, numbers: bool = True, raw: bool = False) -> str | None:
    """The first present of `keys` as non-empty text (numbers become text if allowed), stripped
    unless `raw`: questions and answers keep their text as written, since the judge must see it."""
    key = _present(obj, keys)
    if key is None:
        if not required:
            return None
        names = ", ".join(f'"{k}"' for k in keys)
        raise RowError(f"missing {what} (one of {names}); this row has: {keys_of(obj)}")
    value = obj[key]
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowError(f'"{key}" ({what}) must be {"text or a number" if numbers else "text"}, got {kind_of(value)}')
    if not value.strip():
        raise RowError(f'empty "{key}" ({what})')
    return value if raw else value.strip()


def _video_name(obj: dict) -> str:
    """Stage one's id of the row's video: no directory, no video / feature extension."""
    name = _text(obj, VIDEO_KEYS, "video")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    key = _present(obj, VIDEO_KEYS)
    video = _ANY_EXTENSION.sub("", name) if key == "video" else strip_extension(name, NAME_EXTENSIONS)
    if not video:
        raise RowError(f'"{key}" is only a file extension; give the video file name')
    return video


def _candidates(name: str) -> list[str]:
    name = name.strip()
    stem = _ANY_EXTENSION.sub("", name.replace("\\", "/").rsplit("/", 1)[-1])
    out = []
    for base in (name, stem):
        out += [base, "v_" + base] + ([base[2:]] if base.startswith("v_") else [])
        out += ["video" + base] if base.isdigit() else []
    return [c for c in dict.fromkeys(out) if c]


# --- rows of a file --------------------------------------------------------------------------

def _check_unique(rows: Rows, questions: list[Question]) -> None:
    seen: dict[str, int] = {}
    for q in questions:
        if q.question_id in seen:
            raise rows.error(q.row, f"question id {q.question_id} repeats {rows.where(seen[q.question_id])}; "
                                    "question ids must be unique")
        seen[q.question_id] = q.row


def _split_by_video(questions, unmatched, answers_path, video_ids: Container[str]) -> QuestionSet:
    resolved: dict[str, str | None] = {}
    kept, missing = [], []
    for q in questions:
        if q.video_id not in resolved:
            resolved[q.video_id] = resolve_video_id(q.video_id, video_ids)
        video_id = resolved[q.video_id]
        if video_id is None:
            missing.append(q)
        else:
            kept.append(q if video_id == q.video_id else replace(q, video_id=video_id))
    return QuestionSet(kept, missing, unmatched, answers_path)
