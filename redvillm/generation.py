"""Batched answers from pooled video tokens: the one place prompts are collated and generated.

``generate_answers`` is what ``redvillm-eval predict``, ``VideoAnswerer`` and ``redvillm-serve``
call. Without stop strings, per-row limits or a text callback it is exactly one left-padded
``VideoLLM.generate``; with them, a stopping criterion ends each row at its own stop string or
token limit, and a streamer hands out each row's text as it is decoded.

Shape letters: T frames, N patches, D vision width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from redvillm.batching import VideoSample, collate

# (question, temporal (T, D), spatial (N, D)) for one answer.
Prompt = tuple[str, torch.Tensor, torch.Tensor]
OnText = Callable[[int, str], None]  # (row, new text): called as each row's answer grows


def generate_answers(model, prompts: Sequence[Prompt], max_new_tokens: int | Sequence[int], sampling: dict,
                     stop: Sequence[str] = (), on_text: OnText | None = None) -> list[str]:
    """One left-padded generate over `prompts`; answers cut before the first stop string."""
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    samples = [VideoSample(model.chat.encode(question), temporal, spatial) for question, temporal, spatial in prompts]
    pad = model.chat.tokenizer.pad_token_id if model.chat.tokenizer.pad_token_id is not None else model.chat.eos_id
    inputs = collate(samples, model.adapter.layout, model.chat.placeholder_id, pad, padding_side="left",
                     with_labels=False).to(model.device)
    stop = tuple(s for s in stop if s)
    extra = {}
    rows = _Rows(model.chat, limits, stop, on_text)
    if stop or len(set(limits)) > 1:
        extra["stopping_criteria"] = StoppingCriteriaList([_RowsDone(rows)])
    if on_text is not None:
        extra["streamer"] = rows
    answers = [cut_at_stop(a, stop) for a in model.generate(inputs, max_new_tokens=max(limits), **sampling, **extra)]
    if on_text is not None:
        rows.flush(answers)
    return answers


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest stop string, trailing space removed."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)].rstrip() if cuts else text


class _Rows(BaseStreamer):
    """Each row's generated ids; says when a row is done and streams its safe new text.

    Text is handed out only once it cannot change: trailing whitespace (answers are stripped),
    an unfinished UTF-8 character, and any tail that could still grow into a stop string are
    held back until later tokens settle them.
    """

    def __init__(self, chat, limits: list[int], stop: tuple[str, ...], on_text: OnText | None):
        self.chat, self.limits, self.stop, self.on_text = chat, limits, stop, on_text
        self.ids: list[list[int]] = [[] for _ in limits]
        self.done = [False] * len(limits)
        self.sent = [""] * len(limits)
        self.prompt_seen = False

    def text(self, ids) -> str:
        return self.chat.tokenizer.decode(ids, skip_special_tokens=True).lstrip()

    def finished(self, ids) -> bool:
        """A row is done at its own token limit or once its text holds a stop string."""
        return any(s in self.text(ids) for s in self.stop)

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands over the prompt (or an empty tensor) first
            self.prompt_seen = True
            return
        for row, token in enumerate(value.tolist()):
            if self.done[row]:
                continue
            self.ids[row].append(token)
            self.done[row] = token == self.chat.eos_id or len(self.ids[row]) >= self.limits[row] or \
                self.finished(self.ids[row])
            self._send(row, self._settled(self.ids[row]))

    def end(self) -> None:
        pass

    def _settled(self, ids) -> str:
        text = self.text(ids)
        cut = cut_at_stop(text, self.stop)
        if cut != text:
            return cut
        text = text.rstrip().rstrip("\ufffd").rstrip()
        for size in range(min(len(text), max((len(s) for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(text[-size:]) for s in self.stop):
                return text[:-size].rstrip()
        return text

    def _send(self, row: int, text: str) -> None:
        if len(text) > len(self.sent[row]) and text.startswith(self.sent[row]):
            self.on_text(row, text[len(self.sent[row]):])
            self.sent[row] = text

    def flush(self, answers: list[str]) -> None:
        """The rest of each final answer (what was held back until the end)."""
        for row, answer in enumerate(answers):
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
        done = [len(ids) >= limit or (bool(self.rows.stop) and self.rows.finished(ids))
                for ids, limit in zip(new, self.rows.limits)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
