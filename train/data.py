"""Training samples: instructions joined with pooled video tokens, in a resumable order."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from itertools import islice

from torch.utils.data import Dataset, DistributedSampler

from redvillm.batching import Batcher, VideoSample, fit_to_context
from redvillm.cache import BadTokens, TokenCache
from redvillm.train.annotations import Instruction
from redvillm.errors import UserError
from redvillm.chat import ChatFormat
from redvillm.rows import first_line_is_object
from redvillm.train.pooled import PooledStore
from redvillm.batching import VideoBatch

log = logging.getLogger(__name__)


def usable(instructions: list[Instruction], cache: TokenCache, source: str,
           strict: bool) -> tuple[list[Instruction], Counter]:
    """Instructions whose video is in the cache, and a count of the missing videos' rows."""
    kept, missing = [], Counter()
    for instruction in instructions:
        if instruction.video_id in cache:
            kept.append(instruction)
        else:
            missing[instruction.video_id] += 1
    if missing and strict:
        first = ", ".join(list(missing)[:5])
        raise UserError(f"{source}: {sum(missing.values())} rows name {len(missing)} videos that are not in "
                        f"{cache.path} (first: {first}); extract them or drop --strict to skip them")
    if not kept:
        raise UserError(f"{source}: none of its {len(instructions)} rows names a video in {cache.path}; "
                        "check that the cache was extracted from the videos these annotations describe")
    return kept, missing


def without_bad_videos(instructions: list[Instruction], bad: dict[str, BadTokens], source: str,
                       strict: bool) -> tuple[list[Instruction], Counter]:
    """Instructions whose video's tokens are usable, and a count of the dropped rows per bad video."""
    dropped = Counter(i.video_id for i in instructions if i.video_id in bad)
    if dropped and strict:
        first = bad[next(iter(dropped))]
        raise UserError(f"{first} ({len(dropped)} videos of {source} are unusable; drop --strict to skip them)")
    kept = [i for i in instructions if i.video_id not in bad]
    if not kept:
        raise UserError(f"{source}: every video it names has unusable tokens (first: {bad[next(iter(dropped))]})")
    return kept, dropped


@dataclass
class LongRows:
    """Rows longer than the backbone's context: left out (the prompt alone is too long) or cut."""

    skipped: list[dict]  # {"where", "video_id", "prompt_tokens"}
    truncated: list[dict]  # {"where", "video_id", "answer_tokens", "kept_tokens"}


def within_context(instructions: list[Instruction], chat: ChatFormat, video_tokens: int, context: int | None,
                   source: str) -> tuple[list[Instruction], LongRows]:
    """Leave out the rows whose prompt and video tokens alone fill the context; count (and warn
    about) the rows whose answer will be cut to fit. Only rows that might be too long are
    tokenised: a token is at least one UTF-8 byte, so short rows are known to fit. A backbone
    that states no context (None) keeps every row."""
    if context is None:
        return instructions, LongRows([], [])
    base = chat.encode("x", "x")
    overhead = len(base.prompt_ids) + len(base.answer_ids) - 1 + video_tokens + 16  # 16: template boundaries
    kept, long_rows, where = [], LongRows([], []), _row_names(source)
    for row in instructions:
        if overhead + len(row.question.encode()) + len(row.answer.encode()) <= context:
            kept.append(row)
            continue
        encoded = chat.encode(row.question, row.answer)
        fitted = fit_to_context(encoded, video_tokens, context)
        if fitted is None:
            long_rows.skipped.append({"where": where(row.row), "video_id": row.video_id,
                                      "prompt_tokens": len(encoded.prompt_ids) - 1 + video_tokens})
            continue
        kept.append(row)
        if len(fitted.answer_ids) < len(encoded.answer_ids):
            long_rows.truncated.append({"where": where(row.row), "video_id": row.video_id,
                                        "answer_tokens": len(encoded.answer_ids), "kept_tokens": len(fitted.answer_ids)})
    for kind, rows in (("left out: its prompt and video tokens alone exceed", long_rows.skipped),
                       ("answer cut to fit", long_rows.truncated)):
        for item in rows[:5]:
            log.warning("%s: %s (video %s): %s the backbone's context of %d tokens", source, item["where"],
                        item["video_id"], kind, context)
    if not kept:
        raise UserError(f"{source}: every row is longer than the backbone's context of {context} tokens "
                        f"(first: {long_rows.skipped[0]['where']})")
    return kept, long_rows


def _row_names(source: str):
    """How to name a row's place: JSONL by line, JSON by position in its list (read when needed)."""
    jsonl: list[bool] = []

    def where(row: int) -> str:
        if not jsonl:
            with open(source, encoding="utf-8") as f:
                jsonl.append(first_line_is_object(f.read(1 << 20)))
        return f"line {row + 1}" if jsonl[0] else f"row {row}"

    return where


@dataclass
class TrainItem:
    video_id: str
    sample: VideoSample
    problem: str | None  # why this sample must not be trained on (checked in the main process)


@dataclass
class TrainBatch:
    video_ids: list[str]
    problems: list[str]
    batch: VideoBatch

    def pin_memory(self) -> TrainBatch:
        return TrainBatch(self.video_ids, self.problems, self.batch.pin_memory())


def collate_items(items: list[TrainItem], batcher: Batcher) -> TrainBatch:
    """Training items -> one right-padded, labelled batch (with the items' video ids and problems)."""
    return TrainBatch([i.video_id for i in items], [i.problem for i in items if i.problem],
                      batcher([i.sample for i in items]))


class InstructionDataset(Dataset):
    """Item i: the i-th instruction's chat token ids with its video's pooled tokens.

    Tokenising happens here, in the DataLoader workers, so start-up does not scale with the
    number of instructions. Pooled tokens are checked finite here too; a problem travels with
    the sample so the main process reports it in one line (a worker's exception would not).
    """

    def __init__(self, instructions: list[Instruction], chat: ChatFormat, pooled: PooledStore,
                 video_tokens: int | None = None, context: int | None = None):
        self.instructions, self.chat, self.pooled = instructions, chat, pooled
        self.video_tokens, self.context = video_tokens, context  # both given: answers are cut to fit

    def __len__(self) -> int:
        return len(self.instructions)

    def __getitem__(self, index: int) -> TrainItem:
        row = self.instructions[index]
        temporal, spatial = self.pooled.get(row.video_id)
        problem = self.pooled.nonfinite(row.video_id, temporal, spatial)
        chat = self.chat.encode(row.question, row.answer)
        if self.context is not None:
            chat = fit_to_context(chat, self.video_tokens, self.context)
            if chat is None:  # within_context leaves such rows out; never train on one
                chat, problem = self.chat.encode("", ""), f"row {row.row} ({row.video_id}): longer than the context"
        return TrainItem(row.video_id, VideoSample(chat, temporal, spatial), problem)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle, set_epoch) that can start part-way into an epoch."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Epoch `epoch`, without its first `skip` samples (already trained on)."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)
