"""``judge_all``: judge every prediction row, with bounded retries, a reply cache and a time bound.

Every row ends in one of three states, none of them silent:
- ``judged``: a reply gave a verdict (score; "qa" also a yes/no pred);
- ``judge_failed``: no verdict after ``attempts_per_item`` asks, or the judge refused the
  request (HTTP 4xx), kept failing (5xx, timeouts, non-JSON bodies) past the backend's
  bounded retries, or the row ran past ``row_timeout`` seconds; ``reason`` says which. The
  run goes on with the next row, and failed rows are excluded from accuracy and score;
- ``no_prediction``: the row has no prediction; never sent, never scored.
After ``stop_after_failures`` rows in a row fail because the judge did not answer at all
(it is down, or refuses everything), the remaining rows are marked ``judge_failed`` without
asking, so a dead judge costs minutes, not days; a rerun asks them again (answers so far are
cached).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from redvillm.errors import UserError
from redvillm.evaluate.judge.cache import JudgeCache, cache_key, judge_identity
from redvillm.evaluate.judge.parsing import parser_for
from redvillm.evaluate.judge.protocols import RedvillmProtocol, check_criterion, first, item_fields
from redvillm.evaluate.judge.backends import JudgeBackend, JudgeUnavailable

log = logging.getLogger(__name__)
Status = Literal["judged", "judge_failed", "no_prediction"]
STATUSES = ("judged", "judge_failed", "no_prediction")


@dataclass
class ItemVerdict:
    question_id: str
    status: Status
    pred: str | None = None  # "yes"/"no" ("qa" only; "neither" under original scoring)
    score: float | None = None
    attempts: int = 0  # judge asks made for this item (cached or not)
    answer_type: Any = None  # the item's "type", when it has one
    reply: str | None = None  # the last raw reply of a judge_failed item, for inspection
    reason: str | None = None  # why a judge_failed item failed


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
    protocol: dict = field(default_factory=dict)
    scoring: str = "redvillm"

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
        return _mean([v.score for v in self.verdicts if v.status == "judged"])

    @property
    def accuracy(self) -> float | None:
        """yes / (yes + no) over judged "qa" items, in [0, 1]; None for the other criteria."""
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
        failures = Counter((v.reason or "").split(":")[0] for v in self.verdicts if v.status == "judge_failed")
        return {"criterion": self.criterion, "protocol": self.protocol, "scoring": self.scoring,
                "judge": self.judge, "attempts_per_item": self.attempts_per_item,
                "counts": {"total": len(self.verdicts), **{s: counts[s] for s in STATUSES}},
                "failure_reasons": dict(failures), "accuracy": self.accuracy, "mean_score": self.mean_score,
                "by_type": self.by_type(), "requests": self.requests, "cache_hits": self.cache_hits,
                "items": [asdict(v) for v in self.verdicts]}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _accuracy(verdicts: list[ItemVerdict]) -> float | None:
    preds = [v.pred for v in verdicts if v.status == "judged" and v.pred in ("yes", "no")]
    return _mean([p == "yes" for p in preds])


def _prepare(row: Mapping[str, Any], criterion: str, index: int) -> tuple[str, dict | None, Any]:
    fields = item_fields(row, criterion, index)  # validates first
    qid = first(row, "question_id")
    return str(qid if qid is not None else index), fields, row.get("type")


@dataclass
class _Run:
    """What the rows of one judge_all call share."""

    criterion: str
    backend: JudgeBackend
    cache: JudgeCache | None
    protocol: Any
    attempts: int
    row_timeout: float | None
    stop_after_failures: int
    outcome: JudgeOutcome
    identity: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    unavailable_in_a_row: int = 0
    last_unavailable: str = ""

    def ask(self, messages: list[dict], qid: str, attempt: int, deadline: float | None) -> str:
        key = cache_key(self.identity, self.criterion, messages, attempt, self.protocol.name)
        reply = self.cache.get(key) if self.cache is not None else None
        with self.lock:
            self.outcome.cache_hits += reply is not None
            self.outcome.requests += reply is None
        if reply is None:
            reply = self.backend.complete(messages, deadline=deadline)
            if self.cache is not None:
                self.cache.put(key, reply, criterion=self.criterion, question_id=qid, attempt=attempt)
        return reply

    def judge_one(self, row: tuple[str, dict | None, Any]) -> ItemVerdict:
        qid, fields, answer_type = row
        if fields is None:
            return ItemVerdict(qid, "no_prediction", answer_type=answer_type)
        with self.lock:
            if self.stop_after_failures and self.unavailable_in_a_row >= self.stop_after_failures:
                return ItemVerdict(qid, "judge_failed", answer_type=answer_type, reason=(
                    f"not asked: the judge gave no answer for {self.unavailable_in_a_row} rows in a row "
                    f"(last: {self.last_unavailable})"))
        parse = parser_for(self.outcome.scoring)
        deadline = time.monotonic() + self.row_timeout if self.row_timeout else None
        reply, reason, attempt = None, "", 0
        for attempt in range(self.attempts):
            try:
                reply = self.ask(self.protocol.messages(self.criterion, fields, attempt), qid, attempt, deadline)
            except JudgeUnavailable as err:  # the backend has already retried what is worth retrying
                reason = f"judge unavailable: {err}"
                with self.lock:
                    self.unavailable_in_a_row += 1
                    self.last_unavailable = str(err)
                break
            with self.lock:
                self.unavailable_in_a_row = 0
            verdict = parse(reply, self.criterion)
            if verdict is not None:
                return ItemVerdict(qid, "judged", verdict.pred, verdict.score, attempt + 1, answer_type)
            reason = "unreadable reply: no verdict in it"
        log.warning("judge failed on %s after %d asks: %s", qid, attempt + 1, reason[:300])
        return ItemVerdict(qid, "judge_failed", attempts=attempt + 1, answer_type=answer_type, reply=reply,
                           reason=reason)


def judge_all(items: Iterable[Mapping[str, Any]], criterion: str, backend: JudgeBackend,
              cache: JudgeCache | None, attempts_per_item: int = 3,
              progress: Callable[[JudgeProgress], None] | None = None, workers: int = 1,
              protocol: Any = None, scoring: str = "redvillm", row_timeout: float | None = None,
              stop_after_failures: int = 20) -> JudgeOutcome:
    """Judge every prediction row; resumable through ``cache`` (see the module docstring).

    Rows are validated before the first request. ``workers`` > 1 sends that many requests at
    once (for HTTP judges); verdicts keep the rows' order. ``protocol`` builds the messages
    (default: redvillm's); ``scoring`` is "redvillm" or "original" (parsing.py).
    """
    check_criterion(criterion)
    if attempts_per_item < 1:
        raise UserError("attempts_per_item must be >= 1")
    if scoring not in ("redvillm", "original"):
        raise UserError(f"unknown scoring {scoring!r}; choose redvillm or original")
    protocol = protocol or RedvillmProtocol()
    prepared = [_prepare(r, criterion, i) for i, r in enumerate(items)]
    outcome = JudgeOutcome(criterion, {}, attempts_per_item, protocol=protocol.describe(criterion), scoring=scoring)
    run = _Run(criterion, backend, cache, protocol, attempts_per_item, row_timeout, stop_after_failures, outcome,
               identity=judge_identity(backend.describe()))
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    tally = Counter()
    try:
        for verdict in pool.map(run.judge_one, prepared) if pool else map(run.judge_one, prepared):
            outcome.verdicts.append(verdict)
            tally[verdict.status] += 1
            if progress is not None:
                progress(JudgeProgress(len(outcome.verdicts), len(prepared), tally["judged"],
                                       tally["judge_failed"], verdict.question_id))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    outcome.judge = backend.describe()
    return outcome
