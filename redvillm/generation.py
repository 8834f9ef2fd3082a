"""Batched answers from pooled video tokens: the one place prompts are collated and generated.

``generate_answers`` is what ``redvillm-eval predict``, ``VideoAnswerer`` and ``redvillm-serve``
call. Without stop strings, per-row limits or a text callback it is exactly one left-padded
``VideoLLM.generate``; with them, a stopping criterion ends each row at its own stop string or
token limit, and a streamer hands out each row's text as it is decoded.

Shape letters: T frames, N patches, D vision width.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from redvillm.batching import VideoSample

log = logging.getLogger("redvillm.generation")

# (question, temporal (T, D), spatial (N, D)) for one answer.
Prompt = tuple[str, torch.Tensor, torch.Tensor]
OnText = Callable[[int, str], None]  # (row, new text): called as each row's answer grows


@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop": end of turn or a stop string; "length": the token limit
    prompt_tokens: int  # the row's prompt, video tokens included
    completion_tokens: int


def generate_answers(model, prompts: Sequence[Prompt], max_new_tokens: int | Sequence[int], sampling: dict,
                     stop: Sequence[str] | Sequence[Sequence[str]] = (), on_text: OnText | None = None) -> list[str]:
    """One left-padded generate over `prompts`; answers cut before their first stop string."""
    return [answer.text for answer in generate_rows(model, prompts, max_new_tokens, sampling, stop, on_text)]


def generate_rows(model, prompts: Sequence[Prompt], max_new_tokens: int | Sequence[int], sampling: dict,
                  stop: Sequence[str] | Sequence[Sequence[str]] = (), on_text: OnText | None = None,
                  cancelled: Callable[[int], bool] | None = None) -> list[Answer]:
    """generate_answers with each row's finish reason and token counts. `max_new_tokens`: one
    limit or one per row; `stop`: strings for every row, or one sequence of strings per row;
    `cancelled(row)`: True stops that row at the next token (its asker has gone away)."""
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    stops = row_stops(stop, len(prompts))
    samples = [VideoSample(model.chat.encode(question), temporal, spatial) for question, temporal, spatial in prompts]
    inputs = model.batch(samples, for_generation=True).to(model.device)
    rows = _Rows(model.chat, limits, stops, on_text, cancelled)
    extra = {"streamer": rows}
    if any(stops) or len(set(limits)) > 1 or cancelled is not None:
        extra["stopping_criteria"] = StoppingCriteriaList([_RowsDone(rows)])
    texts = model.generate(inputs, max_new_tokens=max(limits), **sampling, **extra)
    texts = [cut_at_stop(text, row_stop) for text, row_stop in zip(texts, stops)]
    if on_text is not None:
        rows.flush(texts)
    prompt_tokens = inputs.attention_mask.sum(dim=1).tolist()
    return [Answer(text, rows.finish_reason(row), prompt_tokens[row], rows.completion_tokens(row))
            for row, text in enumerate(texts)]


def row_stops(stop, rows: int) -> list[tuple[str, ...]]:
    """`stop` as one tuple of non-empty stop strings per row."""
    if isinstance(stop, str):
        stop = [stop]
    if all(isinstance(s, str) for s in stop):
        return [tuple(s for s in stop if s)] * rows
    if len(stop) != rows or not all(isinstance(s, (list, tuple)) and all(isinstance(x, str) for x in s)
                                    for s in stop):
        raise ValueError(f"stop: strings for every row, or one list of strings per row ({rows} rows)")
    return [tuple(x for x in s if x) for s in stop]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest stop string, trailing space removed."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)].rstrip() if cuts else text


class _Rows(BaseStreamer):
    """Each row's generated ids as generate hands them over: why and when each row ended, and
    (with `on_text`) its settled new text.

    Text is handed out only once it cannot change: trailing whitespace (answers are stripped),
    an unfinished UTF-8 character, and any tail that could still grow into a stop string are
    held back until later tokens settle them.
    """

    def __init__(self, chat, limits: list[int], stops: list[tuple[str, ...]], on_text: OnText | None,
                 cancelled: Callable[[int], bool] | None = None):
        self.chat, self.limits, self.stops, self.on_text = chat, limits, stops, on_text
        self.cancelled = cancelled or (lambda row: False)
        self.ids: list[list[int]] = [[] for _ in limits]
        self.reasons: list[str | None] = [None] * len(limits)
        self.sent = [""] * len(limits)
        self.prompt_seen = False

    def text(self, ids) -> str:
        return self.chat.tokenizer.decode(ids, skip_special_tokens=True).lstrip()

    def stopped(self, row: int, ids) -> bool:
        """Whether the row's text holds one of its stop strings."""
        return bool(self.stops[row]) and any(s in self.text(ids) for s in self.stops[row])

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands over the prompt (or an empty tensor) first
            self.prompt_seen = True
            return
        for row, token in enumerate(value.tolist()):
            if self.reasons[row] is not None:
                continue
            ids = self.ids[row]
            ids.append(token)
            if token == self.chat.eos_id or self.stopped(row, ids) or self.cancelled(row):
                self.reasons[row] = "stop"
            elif len(ids) >= self.limits[row]:
                self.reasons[row] = "length"
            if self.on_text is not None:
                self._send(row, self._settled(row, ids))

    def end(self) -> None:
        pass

    def finish_reason(self, row: int) -> str:
        return self.reasons[row] or "length"

    def completion_tokens(self, row: int) -> int:
        ids = self.ids[row]
        return len(ids) - (bool(ids) and ids[-1] == self.chat.eos_id)

    def _settled(self, row: int, ids) -> str:
        text, stop = self.text(ids), self.stops[row]
        cut = cut_at_stop(text, stop)
        if cut != text:
            return cut
        text = text.rstrip().rstrip("\ufffd").rstrip()
        for size in range(min(len(text), max((len(s) for s in stop), default=0)), 0, -1):
            if any(s.startswith(text[-size:]) for s in stop):
                return text[:-size].rstrip()
        return text

    def _send(self, row: int, text: str) -> None:
        if len(text) > len(self.sent[row]) and text.startswith(self.sent[row]):
            self.on_text(row, text[len(self.sent[row]):])
            self.sent[row] = text

    def flush(self, answers: list[str]) -> None:
        """The rest of each final answer (what was held back until the end)."""
        for row, answer in enumerate(answers):
            if not answer.startswith(self.sent[row]):  # the tokenizer re-spelled earlier text
                log.warning("row %d: streamed %r, but the answer reads %r", row, self.sent[row], answer)
            self._send(row, answer)


class _RowsDone(StoppingCriteria):
    """Per-row stop: its token limit reached, or a stop string in its text."""

    def __init__(self, rows: _Rows):
        self.rows = rows
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.prompt_length is None:  # first call: exactly one token has been generated
            self.prompt_length = input_ids.shape[1] - 1
        new = input_ids[:, self.prompt_length:].tolist()
        done = [len(ids) >= self.rows.limits[row] or self.rows.cancelled(row) or self.rows.stopped(row, ids)
                for row, ids in enumerate(new)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
