"""Answer metrics that need no judge: exact match, contains, token F1 (SQuAD-style).

They are deterministic and cheap, so every evaluation reports them next to (never instead of)
the judge's accuracy and score; short-answer sets (MSVD/MSRVTT/TGIF/ActivityNet-QA) are where
they mean most.

Normalisation (both sides alike): Unicode NFKC (full-width letters, digits and punctuation
become plain ones), lower case, apostrophes removed ("don't" -> "dont", "man's" -> "mans"),
every other punctuation or symbol character becomes a space ("red/white" -> "red white"), the
articles a / an / the dropped, the number words zero..twenty written as digits ("two" == "2";
"twenty-one" becomes "20 1", larger number words are left alone), whitespace collapsed. CJK
characters are kept; Chinese and Japanese are written without spaces, so for `contains` and
`token_f1` each CJK character is a token (Latin runs stay whole words: "红色T恤" -> 红 色 t 恤).
Chinese number words are not converted.

Metric choices:
- contains: the reference's tokens appear contiguously in the prediction's, i.e. as whole
  words ("yes" is not found in "eyes"), which for CJK is a substring test. A yes/no
  reference is decided by the first "yes" or "no" of the prediction, so "Yes, there is no
  dog" counts as yes.
- a reference that normalises to nothing (e.g. "the") is matched only by an empty prediction.
- token_f1: F1 of the token multisets; 1.0 when both are empty, 0.0 when only one is.
- a missing or None prediction is the empty prediction (it scores 0 against any answer).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

from redvillm.evaluate.questions import ACTIVITYNET_TYPES, TASKS

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {word: str(i) for i, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
YES_NO = frozenset({"yes", "no"})
METRICS = ("exact_match", "contains", "token_f1")

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and CJK ideographs
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_APOSTROPHES = re.compile("['\u2019\u02bc]")


def normalize_answer(text: str | None) -> str:
    """The comparable form of an answer (see the module docstring); None -> ""."""
    if text is None:
        return ""
    text = _APOSTROPHES.sub("", unicodedata.normalize("NFKC", str(text)).lower())
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    words = (NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES)
    return " ".join(words)


def tokens(text: str | None) -> list[str]:
    """Normalised tokens: whitespace-separated words, each CJK character on its own."""
    return _TOKEN.findall(normalize_answer(text))


def exact_match(pred: str | None, ref: str | None) -> bool:
    return normalize_answer(pred) == normalize_answer(ref)


def contains(pred: str | None, ref: str | None) -> bool:
    """The normalised reference appears in the normalised prediction as whole words."""
    pred_tokens, ref_tokens = tokens(pred), tokens(ref)
    if not ref_tokens:
        return not pred_tokens
    if len(ref_tokens) == 1 and ref_tokens[0] in YES_NO:
        return next((t for t in pred_tokens if t in YES_NO), None) == ref_tokens[0]
    n = len(ref_tokens)
    return any(pred_tokens[i:i + n] == ref_tokens for i in range(len(pred_tokens) - n + 1))


def token_f1(pred: str | None, ref: str | None) -> float:
    """Harmonic mean of token precision and recall over the token multisets."""
    pred_tokens, ref_tokens = tokens(pred), tokens(ref)
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def score(pred: str | None, ref: str | None) -> dict[str, float]:
    """All three metrics of one answer, as numbers (booleans as 0.0 / 1.0)."""
    return {"exact_match": float(exact_match(pred, ref)), "contains": float(contains(pred, ref)),
            "token_f1": token_f1(pred, ref)}


def aggregate(records: Iterable[dict]) -> dict:
    """Mean metrics of records {"task", "qtype"?, "pred", "answer"}, overall, per task, per type.

    Returns {"count", "exact_match", "contains", "token_f1", "unscored", "per_task": {task: {...}},
    "per_qtype": {qtype: {...}}}. Means are fractions in [0, 1], unrounded (tables format
    them); None when nothing was scored. Records without a reference answer cannot be scored:
    they are only counted in "unscored". per_qtype is {} when no record has a qtype; it lists
    ActivityNet-QA's types in their code order, other labels after them alphabetically.
    """
    records = list(records)
    scored = [r for r in records if r.get("answer") is not None]
    per_record = [score(r.get("pred"), r["answer"]) for r in scored]
    by_task: dict[str, list[dict]] = {}
    by_qtype: dict[str, list[dict]] = {}
    for record, scores in zip(scored, per_record):
        by_task.setdefault(str(record.get("task")), []).append(scores)
        if record.get("qtype") is not None:
            by_qtype.setdefault(str(record["qtype"]), []).append(scores)
    return {**_means(per_record), "unscored": len(records) - len(scored),
            "per_task": {t: _means(by_task[t]) for t in _ordered(by_task, TASKS)},
            "per_qtype": {q: _means(by_qtype[q]) for q in _ordered(by_qtype, ACTIVITYNET_TYPES)}}


def _means(scores: list[dict[str, float]]) -> dict:
    n = len(scores)
    return {"count": n, **{m: (sum(s[m] for s in scores) / n if n else None) for m in METRICS}}


def _ordered(groups: dict, known_order: tuple[str, ...]) -> list[str]:
    return [k for k in known_order if k in groups] + sorted(k for k in groups if k not in known_order)
