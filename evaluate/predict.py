"""``run_predict``: answer every question of a benchmark from cached tokens, resumably.

Output: one JSON line per answered question, appended and flushed batch by batch (a kill loses
at most the batch in flight; a rerun skips every question already answered):

    {"question_id", "video_id", "task", "qtype", "pair", "question", "answer", "pred"}

and beside it PREDS.meta.json: the model, cache, question file, generation parameters, the
fingerprint of what started the file (only that may resume it: evaluate/provenance.py), and the
questions that could not be answered (video not in the cache, answer rows that did not join,
questions that with their video tokens and max_new_tokens exceed the LLM's context: skipped with a
warning, "too_long").
Under torchrun each rank answers questions[rank::world] into PREDS.parts/rank<r>.jsonl, and
rank 0 merges the parts into PREDS by question id.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import redvillm
from redvillm import distributed
from redvillm.memory import pin_mmap_threshold
from redvillm.batching import VideoSample, context_length, sequence_length
from redvillm.cache import open_cache
from redvillm.evaluate.config import PredictConfig
from redvillm.evaluate.provenance import check_resumable, predictions_fingerprint, start_over, started_by
from redvillm.evaluate.questions import Question, read_questions
from redvillm.families.registry import family_for_cache
from redvillm.generation import generate_answers
from redvillm.model_io import check_cache_for_run, load_model, write_json
from redvillm.pooled_sets import cached_tokens

log = logging.getLogger(__name__)


@dataclass
class PredictSummary:
    output: Path
    questions: int
    already_answered: int
    answered: int
    missing_video: list[str] = field(default_factory=list)  # video ids not in the cache
    unmatched: list[str] = field(default_factory=list)
    seconds: float = 0.0
    frames_differ: dict[str, dict] = field(default_factory=dict)  # T / sampling vs the training cache
    too_long: list[dict] = field(default_factory=list)  # questions longer than the LLM's context: skipped


def run_predict(cfg: PredictConfig, progress: Callable[[int, int], None] | None = None) -> PredictSummary:
    pin_mmap_threshold()  # flat memory over many videos (redvillm/memory.py)
    started = time.perf_counter()
    info = distributed.init_from_env()
    device = distributed.resolve_device(cfg.device, info)
    dtype = distributed.resolve_dtype(cfg.dtype, device)
    cache = open_cache(cfg.cache)
    model = load_model(cfg.model_dir, device, dtype)
    differences = _check_cache(cache, model, cfg)
    found = read_questions(cfg.questions, cfg.answers, video_ids=cache, task=cfg.task)
    output = Path(cfg.output)
    fingerprint = predictions_fingerprint(cfg, str(dtype).removeprefix("torch."), cache.info, found.answers_path)
    done = _resume(output, fingerprint, cfg, info)
    mine = [q for q in found.questions[info.rank::info.world_size] if q.question_id not in done]
    summary = PredictSummary(output, len(found.questions), len(found.questions) - _count_left(found, done),
                             0, found.missing_video_ids, found.unmatched, frames_differ=differences)
    target = output if info.world_size == 1 else _part_path(output, info.rank)
    target.parent.mkdir(parents=True, exist_ok=True)
    if info.is_main and not done:  # the fingerprint is on disk before the first answer
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json(_meta_path(output), _meta(cfg, model, cache, found, summary, fingerprint))
    if cfg.do_sample:
        torch.manual_seed(cfg.seed + info.rank)
    pool = _PooledVideos(cache, family_for_cache(model.config.model, model.config.revision, cache.info).pool)
    sampling = dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p) if cfg.do_sample else {}
    _answer_all(model, pool, mine, target, cfg, sampling, summary, progress)
    distributed.barrier()
    summary.too_long = _gather(summary.too_long, info)
    if info.is_main:
        if info.world_size > 1:
            merge_parts(output, [q.question_id for q in found.questions])
        write_json(_meta_path(output), _meta(cfg, model, cache, found, summary, fingerprint))
    summary.seconds = time.perf_counter() - started
    return summary


def _resume(output: Path, fingerprint: dict, cfg: PredictConfig, info) -> dict[str, dict]:
    """Answers already in the file (and torchrun parts), refused unless this run, cache and
    settings started it (evaluate/provenance.py); --overwrite starts it anew."""
    parts = output.with_name(output.name + ".parts")
    if cfg.overwrite and info.is_main:
        start_over(output, _meta_path(output), parts)
    distributed.barrier()  # rank 0 has removed the old file before anyone reads it
    done = read_predictions(output) | _read_parts(output)
    if not cfg.overwrite:
        check_resumable(output, _meta_path(output), fingerprint, len(done), cfg)
    return done


def _answer_all(model, pool, mine: list[Question], target: Path, cfg: PredictConfig, sampling: dict,
                summary: PredictSummary, progress) -> None:
    """Answer `mine` batch by batch into `target` (appended, fsynced); questions longer than the
    LLM's context are skipped into summary.too_long instead of being sent."""
    context = context_length(model.backbone.config, model.chat.tokenizer)
    _end_partial_line(target)
    with open(target, "a", encoding="utf-8") as out:
        for start in range(0, len(mine), cfg.batch_size):
            batch = _fitting(model, pool, mine[start : start + cfg.batch_size], context, cfg, summary.too_long)
            preds = generate_answers(model, [(q.question, sample.temporal, sample.spatial) for q, sample in batch],
                                     cfg.max_new_tokens, sampling) if batch else []
            for (question, _), pred in zip(batch, preds):
                out.write(json.dumps(_record(question, pred), ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            summary.answered += len(batch)
            if progress:
                progress(summary.answered + len(summary.too_long), len(mine))


def _fitting(model, pool, batch: list[Question], context: int | None, cfg: PredictConfig,
             too_long: list[dict]) -> list[tuple[Question, VideoSample]]:
    """The batch's questions whose prompt, video tokens and max_new_tokens fit the context."""
    kept = []
    for question in batch:
        sample = VideoSample(model.chat.encode(question.question), *pool.get(question.video_id))
        video_tokens = model.adapter.layout.num_video_tokens(sample.temporal.shape[0], sample.spatial.shape[0])
        length = sequence_length(sample.chat, video_tokens, new_tokens=cfg.max_new_tokens)
        if context is not None and length > context:
            too_long.append({"question_id": question.question_id, "video_id": question.video_id,
                             "tokens": length, "context": context})
            log.warning("%s: question %s (video %s) needs %d positions with its video tokens and %d new tokens, "
                        "more than the model's context of %d: skipped", cfg.questions, question.question_id,
                        question.video_id, length, cfg.max_new_tokens, context)
        else:
            kept.append((question, sample))
    return kept


def _gather(items: list, info) -> list:
    """Every rank's list, concatenated (the list itself in a single process)."""
    if info.world_size == 1:
        return items
    import torch.distributed as dist

    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


class _PooledVideos:
    """Pooled tokens of the last few videos: benchmarks ask several questions per video."""

    def __init__(self, cache, pool, size: int = 64):
        self.cache, self.pool, self.size = cache, pool, size
        self._items: OrderedDict[str, tuple] = OrderedDict()

    def get(self, video_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        if video_id not in self._items:  # a raw or a pooled cache: the same values (redvillm.pooled_sets)
            self._items[video_id] = cached_tokens(self.cache, self.pool, video_id)  # (T, D'), (N', D')
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(video_id)
        return self._items[video_id]


def _record(question: Question, pred: str) -> dict:
    return {"question_id": question.question_id, "video_id": question.video_id, "task": question.task,
            "qtype": question.qtype, "pair": question.pair, "question": question.question,
            "answer": question.answer, "pred": pred}


def read_predictions(path: Path) -> dict[str, dict]:
    """Answered questions by id; a line cut short by a kill is ignored (answered again)."""
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "question_id" in record and "pred" in record:
            records[str(record["question_id"])] = record
    return records


def _end_partial_line(path: Path) -> None:
    """A kill mid-write leaves a line without its newline: close it so appends start clean."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _part_path(output: Path, rank: int) -> Path:
    return output.with_name(output.name + ".parts") / f"rank{rank:03d}.jsonl"


def _read_parts(output: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for part in sorted(output.with_name(output.name + ".parts").glob("rank*.jsonl")):
        records |= read_predictions(part)
    return records


def merge_parts(output: Path, order: list[str]) -> None:
    """Rank files + earlier output -> one file in question order, joined by question id."""
    records = read_predictions(output) | _read_parts(output)
    tmp = output.with_name(f".{output.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for question_id in order:
            if question_id in records:
                out.write(json.dumps(records[question_id], ensure_ascii=False) + "\n")
    os.replace(tmp, output)
    for part in output.with_name(output.name + ".parts").glob("rank*.jsonl"):
        part.unlink()


def _count_left(found, done) -> int:
    return sum(q.question_id not in done for q in found.questions)


def _meta_path(output: Path) -> Path:
    return output.with_name(output.stem + ".meta.json")


def _meta(cfg: PredictConfig, model, cache, found, summary: PredictSummary, fingerprint: dict) -> dict:
    return {"redvillm_version": redvillm.__version__, "predict_config": asdict(cfg),
            "fingerprint": fingerprint, "started_by": started_by(cfg),
            "model": asdict(model.config), "cache": cache.info,
            "answers_file": str(found.answers_path) if found.answers_path else None,
            "questions": summary.questions, "answered": len(read_predictions(summary.output)),
            "missing_video_questions": len(found.missing_video), "missing_videos": summary.missing_video,
            "unmatched": summary.unmatched, "frames_differ_from_training": summary.frames_differ,
            "too_long_questions": len(summary.too_long), "too_long": summary.too_long}


def _check_cache(cache, model, cfg: PredictConfig) -> dict[str, dict]:
    """Refuse tokens the run cannot read; T / sampling differences are warned about and recorded.

    Another T or sampling rule than in training still gives tokens the model reads (pooling
    makes (T + N) video tokens of any T), and answering at another T is a legitimate
    experiment, so it is not refused; but the number is then not the training setting's, so the
    difference is printed and written to PREDS.meta.json ("frames_differ_from_training").
    """
    differences = check_cache_for_run(cfg.cache, cache.info, model.config, cfg.model_dir)
    for key, values in differences.items():
        log.warning("%s: %s is %r here but %r in %s's training cache; answers are for this setting, not the "
                    "training one (recorded in the meta file)", cfg.cache, key, values["this cache"],
                    values["training"], cfg.model_dir)
    return differences
