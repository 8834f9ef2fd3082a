"""Samples -> VideoBatch: expand the placeholder to V video tokens, pad, mask the prompt out.

Shape letters: T frames, N patches, D vision width, L sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from redvillm.chat import EncodedChat
from redvillm.pooling import canonical_pooling, uses_spatial, uses_temporal

IGNORE = -100


@dataclass(frozen=True)
class VideoLayout:
    """Which token sets a pooling mode puts in front of the LLM, in which order."""

    pooling: str
    suffix_tokens: int = 0  # the backbone's own fixed vectors after the video tokens (LLaVA-OneVision's newline)

    def __post_init__(self):
        object.__setattr__(self, "pooling", canonical_pooling(self.pooling))

    @property
    def uses_temporal(self) -> bool:
        return uses_temporal(self.pooling)

    @property
    def uses_spatial(self) -> bool:
        return uses_spatial(self.pooling)

    def num_video_tokens(self, num_frames: int, num_patches: int) -> int:
        """V: the placeholders one sample needs."""
        return num_frames * self.uses_temporal + num_patches * self.uses_spatial + self.suffix_tokens


@dataclass
class VideoBatch:
    """Model inputs for B (video, text) samples; see redvillm.batching.collate."""

    input_ids: torch.Tensor  # (B, L), the placeholder id at every video-token position
    attention_mask: torch.Tensor  # (B, L)
    temporal: torch.Tensor | None  # (B, T, D) padded over T
    temporal_mask: torch.Tensor | None  # (B, T) True for real rows
    spatial: torch.Tensor | None  # (B, N, D)
    labels: torch.Tensor | None = None  # (B, L), -100 but on answer tokens

    def pin_memory(self) -> VideoBatch:
        """Page-locked copies, so that .to(cuda, non_blocking=True) really overlaps (DataLoader calls this)."""
        return VideoBatch(**{k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()})

    def to(self, device: torch.device) -> VideoBatch:
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return VideoBatch(**moved)


@dataclass
class VideoSample:
    chat: EncodedChat
    temporal: torch.Tensor  # (T, D') mean over patches, D' as the projector takes it (4D for Qwen/InternVL)
    spatial: torch.Tensor  # (N, D) mean over time


def fit_to_context(chat: EncodedChat, video_tokens: int, context: int, room: int = 1) -> EncodedChat | None:
    """`chat` cut to fit in `context` tokens once its placeholder becomes `video_tokens` tokens.

    None when the prompt alone leaves fewer than `room` tokens (training: one answer token;
    generation: the tokens to generate): such a row cannot be used. Otherwise the answer is cut
    at the end to fit (a cut answer loses its end-of-turn token). Callers count both cases.
    """
    prompt = len(chat.prompt_ids) - 1 + video_tokens
    if prompt + room > context:
        return None
    if prompt + len(chat.answer_ids) <= context:
        return chat
    return EncodedChat(chat.prompt_ids, chat.answer_ids[: context - prompt], chat.placeholder_at)


def collate(samples: list[VideoSample], layout: VideoLayout, placeholder_id: int, pad_id: int,
            padding_side: str = "right", with_labels: bool = True) -> VideoBatch:
    """Right padding for training; left padding for batched generation."""
    rows, labels = [], []
    for sample in samples:
        count = layout.num_video_tokens(sample.temporal.shape[0], sample.spatial.shape[0])
        at = sample.chat.placeholder_at
        prompt = sample.chat.prompt_ids[:at] + [placeholder_id] * count + sample.chat.prompt_ids[at + 1:]
        answer = sample.chat.answer_ids if with_labels else []
        rows.append(prompt + answer)
        labels.append([IGNORE] * len(prompt) + answer)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    label_ids = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels)):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row)
        attention[i, span] = 1
        label_ids[i, span] = torch.tensor(label)
    temporal, temporal_mask = _pad_frames([s.temporal for s in samples])
    return VideoBatch(
        input_ids=input_ids,
        attention_mask=attention,
        temporal=temporal if layout.uses_temporal else None,
        temporal_mask=temporal_mask if layout.uses_temporal else None,
        spatial=torch.stack([s.spatial for s in samples]) if layout.uses_spatial else None,
        labels=label_ids if with_labels else None,
    )


@dataclass(frozen=True)
class Batcher:
    """One model's way of turning samples into a VideoBatch: its video layout, placeholder id and
    pad id. Small and picklable, so DataLoader workers can build batches with it."""

    layout: VideoLayout
    placeholder_id: int
    pad_id: int

    def __call__(self, samples: list[VideoSample], for_generation: bool = False) -> VideoBatch:
        """Training: right padding, labels on the answer tokens. Generation: left padding, no labels."""
        if for_generation:
            return collate(samples, self.layout, self.placeholder_id, self.pad_id, padding_side="left",
                           with_labels=False)
        return collate(samples, self.layout, self.placeholder_id, self.pad_id)


def pad_id(tokenizer, eos_id: int) -> int:
    """The tokenizer's pad id, or end-of-sequence when it has none (many chat LLMs ship without one)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id


def _pad_frames(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Videos kept shorter than T ("keep" policy) are padded; the mask says which rows are real."""
    longest = max(r.shape[0] for r in rows)
    padded = rows[0].new_zeros((len(rows), longest, rows[0].shape[-1]))  # (B, T, D)
    mask = torch.zeros((len(rows), longest), dtype=torch.bool)
    for i, row in enumerate(rows):
        padded[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = True
    return padded, mask


def sequence_length(chat: EncodedChat, video_tokens: int, *, new_tokens: int = 0) -> int:
    """Positions one sample takes in the LLM: the prompt with its placeholder expanded to
    `video_tokens`, the answer (training; empty at inference) and `new_tokens` to generate.
    `collate` builds exactly this many positions before padding."""
    return len(chat.prompt_ids) - 1 + video_tokens + len(chat.answer_ids) + new_tokens


def context_length(backbone_config, tokenizer=None) -> int | None:
    """How many positions (the prompt with its video tokens, the answer, the tokens to generate)
    the LLM takes: the smaller of its text config's max_position_embeddings and the tokenizer's
    model_max_length when set; None when neither says.

    A longer sample is skipped with a count and a warning (training and predict), never sent:
    attention over it would ask for memory the machine does not have, on every rerun.
    """
    text_config = backbone_config.get_text_config() if hasattr(backbone_config, "get_text_config") else backbone_config
    limits = [getattr(text_config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(n) for n in limits if n is not None and 0 < n < 10**8]  # tokenizers say 1e30 for "unset"
    return min(limits) if limits else None
