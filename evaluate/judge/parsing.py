"""Reading a verdict out of a judge reply: redvillm's tolerant rule, or the original scripts'.

redvillm (default): JSON, a Python-literal dict (ast.literal_eval, never eval), single quotes,
prose or ```json fences around it, numeric strings ("4") and fractional scores (3.5) are read;
a score outside 0..5, or a QA "pred" other than yes/no, is no verdict.

original (``--original-scoring``): what Video-ChatGPT's scripts do with a reply: the whole
reply must be a Python literal dict (ast.literal_eval); the score is int(score) (3.8 -> 3,
no range check); a QA "pred" counts as yes when "yes" is a substring of it (lower-cased), else
as no when "no" is, else as neither (then it is in the mean score but not in the accuracy). A
reply on which their aggregation would raise (no "score", int() failing) is no verdict.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from redvillm.evaluate.judge.protocols import check_criterion


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
    check_criterion(criterion)
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


def parse_original(text: str, criterion: str) -> Verdict | None:
    """The verdict as Video-ChatGPT's scripts read it (see the module docstring)."""
    check_criterion(criterion)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict) or "score" not in value:
        return None
    try:
        score = float(int(value["score"]))
    except (TypeError, ValueError, OverflowError):
        return None
    if criterion != "qa":
        return Verdict(score=score)
    pred = value.get("pred")
    if not isinstance(pred, str):
        return None  # their .lower() would raise
    word = "yes" if "yes" in pred.lower() else "no" if "no" in pred.lower() else "neither"
    return Verdict(score=score, pred=word)


def parser_for(scoring: str):
    return parse_original if scoring == "original" else parse_reply
