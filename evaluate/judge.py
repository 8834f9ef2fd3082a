"""The LLM judge: prompts, tolerant reply parsing, two backends, a resumable reply cache.

Criteria: "qa" (zero-shot QA: the judge says whether the prediction matches the answer,
``pred`` yes/no, and gives a ``score`` 0-5) and the generative benchmark's five scores:
"ci" correctness of information, "do" detail orientation, "cu" contextual understanding,
"tu" temporal understanding, "co" consistency. Each request is one system message stating
the criterion and reply format, one user message with the question(s), the reference
answer and the prediction(s) (FORMATS.md, "The judge protocol").

Items (one prediction row each, e.g. a line of a predictions JSONL):
    question_id   optional; the row's position is used when absent
    question      (alias "Q")                        all criteria but "co"
    answer        (alias "A")                        all criteria; reference answer
    pred          the model's answer                 all criteria but "co"
    question1/2   (aliases "Q1"/"Q2"), optional      "co"
    pred1, pred2  answers to the two questions        "co"
    type          optional answer type (ActivityNet-QA codes), reported per type
A missing or null prediction is counted as ``no_prediction`` (never sent, never scored); a
row without a reference answer (or question) is a UserError naming the row.

Unlike the original scripts: the judge model and parameters are pinned and recorded
(``describe()``), temperature 0, a reply that does not parse is re-asked at most
``attempts_per_item`` times (each re-ask says so, hence is a different request and cache
key) and then counted as ``judge_failed``, fractional scores are kept, and every reply is
cached on disk so a rerun or a crash re-asks nothing already answered.

Cache file (JSONL, append-only, one fsync'd line per reply, no pickle):
    {"key": sha256 hex, "reply": str, "criterion": str, "question_id": str, "attempt": int}
key = sha256 of the judge's identity (``describe()`` minus VOLATILE_FIELDS), the criterion,
the attempt number and the messages. A truncated last line (kill mid-write) is dropped.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from redvillm.errors import UserError
from redvillm.evaluate.judge_backends import (  # noqa: F401 - the judge's public surface
    JudgeBackend,
    JudgeUnavailable,
    OpenAICompatibleJudge,
    TransformersJudge,
    chat_completions_url,
)

log = logging.getLogger(__name__)

Criterion = Literal["qa", "ci", "do", "cu", "tu", "co"]
CRITERIA: tuple[str, ...] = ("qa", "ci", "do", "cu", "tu", "co")
Message = dict[str, str]
# describe() keys that may change without changing the judge's answers (where it runs,
# client settings, what the server reported): left out of the cache key.
VOLATILE_FIELDS = frozenset({"endpoint", "client", "observed", "device", "runtime"})

# ---------------------------------------------------------------------------- prompts

_QA_SYSTEM = (
    "You check answers to questions about videos. You are given a question, the correct "
    "answer and a predicted answer. Decide whether the prediction means the same as the "
    "correct answer: synonyms and paraphrases count as a match, a different or contradicting "
    "answer does not. Then rate how well the prediction answers the question from 0 (wrong) "
    "to 5 (fully correct). Reply with a Python dictionary and nothing else, exactly in this "
    'form: {"pred": "yes", "score": 4}. "pred" is "yes" or "no"; "score" is a number from 0 to 5.'
)
_SCORE_SYSTEM = (
    "You grade what a video assistant said about a video you cannot see. You are given {given}. "
    "Grade one criterion only: {criterion} Give a score from 0 (worst) to 5 (best). Reply with "
    'a Python dictionary and nothing else, exactly in this form: {{"score": 3}}.'
)
_GIVEN = "the question, a reference answer written by someone who watched the video, and the assistant's answer"
_GIVEN_CO = ("two differently worded questions that have the same answer, a reference answer "
             "written by someone who watched the video, and the assistant's answer to each question")
_CRITERION_TEXT = {
    "ci": "correctness of information. Does the answer agree with the reference? Penalise facts "
          "that contradict the reference or that it does not support (invented objects, actions, "
          "numbers). The same facts in other words are correct.",
    "do": "detail orientation. Is the answer complete and specific? Reward answers that cover the "
          "reference's points and name concrete objects, actions and attributes; penalise generic "
          "statements and important points left out.",
    "cu": "contextual understanding. Does the answer fit the overall context of the video as the "
          "reference describes it? Penalise answers that sound plausible but miss or misread what "
          "the video is about.",
    "tu": "temporal understanding. Does the answer get the order and timing of events right? "
          "Compare its sequence of events with the reference; penalise swapped, missing or "
          "invented steps.",
    "co": "consistency. Are the two answers consistent with each other and with the reference? "
          "Penalise answers that contradict each other or the reference.",
}
_FORMAT_EXAMPLE = {"qa": '{"pred": "yes", "score": 4}'}
_REASK = ("\n\n(Attempt {n}: the previous reply could not be read. Reply with the dictionary "
          "only, for example {example}.)")


def build_messages(criterion: str, fields: Mapping[str, str], attempt: int = 0) -> list[Message]:
    """The system + user messages for one item (``fields`` as returned by ``item_fields``)."""
    _check_criterion(criterion)
    if criterion == "qa":
        system = _QA_SYSTEM
        user = (f"Question: {fields['question']}\nCorrect answer: {fields['answer']}\n"
                f"Predicted answer: {fields['pred']}")
    elif criterion == "co":
        system = _SCORE_SYSTEM.format(given=_GIVEN_CO, criterion=_CRITERION_TEXT["co"])
        user = (f"Question 1: {fields['question1']}\nQuestion 2: {fields['question2']}\n"
                f"Reference answer: {fields['answer']}\n"
                f"Answer to question 1: {fields['pred1']}\nAnswer to question 2: {fields['pred2']}")
    else:
        system = _SCORE_SYSTEM.format(given=_GIVEN, criterion=_CRITERION_TEXT[criterion])
        user = (f"Question: {fields['question']}\nReference answer: {fields['answer']}\n"
                f"Assistant's answer: {fields['pred']}")
    if attempt:
        user += _REASK.format(n=attempt + 1, example=_FORMAT_EXAMPLE.get(criterion, '{"score": 3}'))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise UserError(f"unknown judge criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


def _first(item: Mapping[str, Any], *names: str) -> Any:
    return next((item[n] for n in names if item.get(n) is not None), None)


def item_fields(item: Mapping[str, Any], criterion: str, index: int) -> dict[str, str] | None:
    """The prompt fields of one prediction row; None when it carries no prediction."""
    if not isinstance(item, Mapping):
        raise UserError(f"prediction row {index} is a {type(item).__name__}, not an object")
    qid = _first(item, "question_id")
    where = f"prediction row {index}" + (f" (question_id {qid})" if qid is not None else "")
    answer = _first(item, "answer", "A")
    if answer is None:
        raise UserError(f"{where} has no reference answer: expected an 'answer' (or 'A') field")
    if criterion == "co":
        preds = _first(item, "pred1"), _first(item, "pred2")
        if None in preds:
            return None
        q1, q2 = _first(item, "question1", "Q1"), _first(item, "question2", "Q2")
        return {"question1": str(q1 if q1 is not None else "(not given)"),
                "question2": str(q2 if q2 is not None else "(not given)"),
                "answer": str(answer), "pred1": str(preds[0]), "pred2": str(preds[1])}
    question, pred = _first(item, "question", "Q"), _first(item, "pred")
    if question is None:
        raise UserError(f"{where} has no question: expected a 'question' (or 'Q') field")
    if pred is None:
        return None
    return {"question": str(question), "answer": str(answer), "pred": str(pred)}


# ---------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Verdict:
    score: float  # 0..5, fractional scores kept
    pred: str | None = None  # "yes" / "no" for "qa", None otherwise


_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.S)
_PAIR = re.compile(r"""["']?([A-Za-z_]+)["']?\s*:\s*("[^"]*"|'[^']*'|[^,}\s]+)""")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_MAX_REPLY = 20_000  # longer replies are cut: literal_eval on megabytes is slow, not unsafe


def parse_reply(text: str, criterion: str) -> Verdict | None:
    """The verdict in a judge reply, or None when it holds no valid one.

    Accepts JSON, a Python-literal dict (ast.literal_eval, never eval), single quotes, prose
    or ```json fences around it, numeric strings ("4") and fractional scores (3.5). Invalid:
    no dict, score missing or outside 0..5, and for "qa" a pred other than yes/no.
    """
    _check_criterion(criterion)
    if not isinstance(text, str):
        return None
    text = text[:_MAX_REPLY]
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text.strip()] + _brace_spans(text)
    for candidate in candidates:
        mapping = _load_mapping(candidate.strip())
        verdict = _verdict(mapping, criterion) if mapping is not None else None
        if verdict is not None:
            return verdict
    return None


def _brace_spans(text: str, limit: int = 20) -> list[str]:
    """Balanced {...} substrings, outermost first, in order of appearance."""
    spans, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            start = i if depth == 0 else start
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
                if len(spans) == limit:
                    break
    return spans


def _load_mapping(candidate: str) -> dict | None:
    if not candidate.startswith("{"):
        return None
    for load in (json.loads, ast.literal_eval):
        try:
            value = load(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    pairs = {k: v.strip("'\"") for k, v in _PAIR.findall(candidate)}  # {pred: yes, score: 4}
    return pairs or None


def _verdict(mapping: dict, criterion: str) -> Verdict | None:
    lowered = {k.strip().lower(): v for k, v in mapping.items() if isinstance(k, str)}
    score = _score(lowered.get("score"))
    if score is None:
        return None
    if criterion != "qa":
        return Verdict(score=score)
    pred = _yes_no(lowered.get("pred"))
    return Verdict(score=score, pred=pred) if pred else None


def _score(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not _NUMBER.fullmatch(value):
            return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) and 0.0 <= score <= 5.0 else None


def _yes_no(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        word = value.strip().strip(".!").lower()
        return word if word in ("yes", "no") else None
    return None


# ---------------------------------------------------------------------------- cache


class JudgeCache:
    """Judge replies on disk (JSONL, append-only, fsync'd per line); see the module docstring."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._replies: dict[str, str] = {}
        self._lock = threading.Lock()
        self.skipped_lines = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        if raw and not raw.endswith(b"\n"):  # killed mid-write: drop the partial line
            log.warning("judge cache %s: dropping a truncated last line", self.path)
            os.truncate(self.path, len(raw) - len(lines[-1]))
        for line in lines[:-1]:
            try:
                record = json.loads(line)
                self._replies[record["key"]] = record["reply"]
            except (ValueError, KeyError, TypeError):
                self.skipped_lines += 1
        if self.skipped_lines:
            log.warning("judge cache %s: skipped %d unreadable lines", self.path, self.skipped_lines)

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, key: str) -> str | None:
        return self._replies.get(key)

    def put(self, key: str, reply: str, **meta: Any) -> None:
        line = json.dumps({"key": key, "reply": reply, **meta}, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._replies[key] = reply


def judge_identity(description: Mapping[str, Any]) -> dict:
    """What identifies a judge's answers: describe() without VOLATILE_FIELDS."""
    return {k: v for k, v in description.items() if k not in VOLATILE_FIELDS}


def cache_key(identity: Mapping[str, Any], criterion: str, messages: list[Message], attempt: int) -> str:
    blob = json.dumps({"judge": identity, "criterion": criterion, "attempt": attempt, "messages": messages},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------- judging

Status = Literal["judged", "judge_failed", "no_prediction"]


@dataclass
class ItemVerdict:
    question_id: str
    status: Status
    pred: str | None = None  # "yes"/"no" ("qa" only)
    score: float | None = None
    attempts: int = 0  # judge requests made for this item (cached or not)
    answer_type: Any = None  # the item's "type", when it has one
    reply: str | None = None  # the last raw reply of a judge_failed item, for inspection


@dataclass
class JudgeProgress:
    done: int
    total: int
    judged: int
    failed: int
    question_id: str


@dataclass
class JudgeOutcome:
    criterion: str
    judge: dict  # backend.describe() at the end of the run
    attempts_per_item: int
    verdicts: list[ItemVerdict] = field(default_factory=list)
    requests: int = 0  # backend calls made in this run
    cache_hits: int = 0

    def count(self, status: Status) -> int:
        return sum(v.status == status for v in self.verdicts)

    @property
    def judged(self) -> int:
        return self.count("judged")

    @property
    def failed(self) -> int:
        return self.count("judge_failed")

    @property
    def mean_score(self) -> float | None:
        scores = [v.score for v in self.verdicts if v.status == "judged"]
        return sum(scores) / len(scores) if scores else None

    @property
    def accuracy(self) -> float | None:
        """Fraction in [0, 1] of judged "qa" items the judge said yes to; None otherwise."""
        return _accuracy(self.verdicts) if self.criterion == "qa" else None

    def by_type(self) -> dict[str, dict]:
        groups: dict[str, list[ItemVerdict]] = {}
        for v in self.verdicts:
            if v.answer_type is not None:
                groups.setdefault(str(v.answer_type), []).append(v)
        return {t: {"judged": sum(v.status == "judged" for v in vs), "accuracy": _accuracy(vs),
                    "mean_score": _mean([v.score for v in vs if v.status == "judged"])}
                for t, vs in sorted(groups.items())}

    def to_dict(self) -> dict:
        counts = Counter(v.status for v in self.verdicts)
        statuses = ("judged", "judge_failed", "no_prediction")
        return {"criterion": self.criterion, "judge": self.judge, "attempts_per_item": self.attempts_per_item,
                "counts": {"total": len(self.verdicts), **{s: counts[s] for s in statuses}},
                "accuracy": self.accuracy, "mean_score": self.mean_score, "by_type": self.by_type(),
                "requests": self.requests, "cache_hits": self.cache_hits,
                "items": [asdict(v) for v in self.verdicts]}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _accuracy(verdicts: list[ItemVerdict]) -> float | None:
    preds = [v.pred for v in verdicts if v.status == "judged"]
    return _mean([p == "yes" for p in preds])


def _prepare(row: Mapping[str, Any], criterion: str, index: int) -> tuple[str, dict | None, Any]:
    fields = item_fields(row, criterion, index)  # validates first
    qid = _first(row, "question_id")
    return str(qid if qid is not None else index), fields, row.get("type")


def judge_all(items: Iterable[Mapping[str, Any]], criterion: str, backend: JudgeBackend,
              cache: JudgeCache | None, attempts_per_item: int = 3,
              progress: Callable[[JudgeProgress], None] | None = None, workers: int = 1) -> JudgeOutcome:
    """Judge every prediction row; resumable through ``cache``.

    Rows are validated before the first request. ``workers`` > 1 sends that many requests at
    once (for HTTP judges); verdicts keep the rows' order. JudgeUnavailable propagates, with
    every reply so far already in the cache.
    """
    _check_criterion(criterion)
    if attempts_per_item < 1:
        raise UserError("attempts_per_item must be >= 1")
    rows = list(items)
    prepared = [_prepare(r, criterion, i) for i, r in enumerate(rows)]
    identity = judge_identity(backend.describe())
    outcome = JudgeOutcome(criterion, {}, attempts_per_item)
    stats_lock = threading.Lock()

    def ask(messages: list[Message], qid: str, attempt: int) -> str:
        key = cache_key(identity, criterion, messages, attempt)
        reply = cache.get(key) if cache is not None else None
        with stats_lock:
            outcome.cache_hits += reply is not None
            outcome.requests += reply is None
        if reply is None:
            reply = backend.complete(messages)
            if cache is not None:
                cache.put(key, reply, criterion=criterion, question_id=qid, attempt=attempt)
        return reply

    def judge_one(row: tuple[str, dict | None, Any]) -> ItemVerdict:
        qid, fields, answer_type = row
        if fields is None:
            return ItemVerdict(qid, "no_prediction", answer_type=answer_type)
        reply = None
        for attempt in range(attempts_per_item):
            reply = ask(build_messages(criterion, fields, attempt), qid, attempt)
            verdict = parse_reply(reply, criterion)
            if verdict is not None:
                return ItemVerdict(qid, "judged", verdict.pred, verdict.score, attempt + 1, answer_type)
        log.warning("judge reply for %s unreadable after %d attempts: %.200r", qid, attempts_per_item, reply)
        return ItemVerdict(qid, "judge_failed", attempts=attempts_per_item, answer_type=answer_type, reply=reply)

    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    tally = Counter()
    try:
        for verdict in pool.map(judge_one, prepared) if pool else map(judge_one, prepared):
            outcome.verdicts.append(verdict)
            tally[verdict.status] += 1
            if progress is not None:
                progress(JudgeProgress(len(outcome.verdicts), len(prepared), tally["judged"],
                                       tally["judge_failed"], verdict.question_id))
    finally:
        if pool is not None:  # on JudgeUnavailable, do not keep asking for the queued rows
            pool.shutdown(wait=True, cancel_futures=True)
    outcome.judge = backend.describe()
    return outcome
