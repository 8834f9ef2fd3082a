"""``run_train``: pooled cached tokens -> trained projector + temporal module (stage two).

The vision encoder never runs here: samples are the videos' pooled sets, a pooled cache's own
or a raw cache's pooled sidecar (train/pooled.py), the same values either way. The LLM is frozen and
outside DDP; only the VideoAdapter's gradients are synchronised.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from redvillm import distributed
from redvillm.memory import pin_mmap_threshold
from redvillm.batching import context_length
from redvillm.cache import cache_mismatch, model_identity, open_cache
from redvillm.train.annotations import read_instructions
from redvillm.errors import UserError
from redvillm.journal import append_journal
from redvillm.families.registry import family_for_cache
from redvillm.model_io import (ADAPTER_FILE, LOG_FILE, SKIPPED_FILE, TRAIN_CONFIG_FILE, VideoModelConfig, adapter_tmp,
                               build_video_llm, has_adapter, save_adapter, write_json)
from redvillm.train import checkpoint
from redvillm.train.config import TrainConfig
from redvillm.train.data import (InstructionDataset, LongRows, ResumableSampler, TrainBatch, collate_items, usable,
                                 within_context, without_bad_videos)
from redvillm.train.pooled import PooledStore
from redvillm.video_llm import VideoLLM

log = logging.getLogger(__name__)


@dataclass
class TrainPlan:
    """What the run is about to do; announced once before the first step."""

    instructions: int
    videos: int
    skipped_rows: int
    skipped_examples: list[str]
    trainable_parameters: int
    micro_batch: int
    world_size: int
    steps_per_epoch: int
    total_steps: int
    start_step: int
    bad_videos: list = field(default_factory=list)  # BadTokens of the skipped videos
    long_rows: LongRows = field(default_factory=lambda: LongRows([], []))  # longer than the context
    context: int = 0  # tokens the backbone takes


@dataclass
class TrainProgress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    samples_per_s: float


@dataclass
class TrainSummary:
    output: Path
    steps: int
    first_loss: float | None
    last_loss: float | None
    seconds: float
    losses: list[float] = field(default_factory=list)
    skipped_videos: int = 0  # videos whose tokens were unusable (listed in skipped.json)
    rows_too_long: int = 0  # rows left out: prompt and video tokens alone exceed the context
    answers_cut: int = 0  # rows whose answer was cut to fit the context


@dataclass
class TrainSetup:
    """Everything run_train builds before its first step; bench/train.py times steps built from it."""

    cfg: TrainConfig
    info: distributed.DistInfo
    device: torch.device
    out: Path
    cache_info: dict
    family: object  # redvillm.families Family
    llm: VideoLLM
    dataset: InstructionDataset
    sampler: ResumableSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    fingerprint: dict
    position: checkpoint.Position  # where training starts (after a resumed checkpoint)
    plan: TrainPlan
    autocast: contextlib.AbstractContextManager
    started: float  # time.perf_counter() when setup began

    def step(self, micro_batches: list[TrainBatch], step: int) -> float:
        """One optimizer step over `micro_batches` (the step number names it in errors)."""
        return _step(self.llm, micro_batches, self.optimizer, self.scheduler, self.cfg, self.device, self.autocast,
                     self.info.world_size, step, self.out)


def run_train(cfg: TrainConfig, progress: Callable[[TrainProgress], None] | None = None,
              announce: Callable[[TrainPlan], None] | None = None,
              should_stop: Callable[[int], bool] | None = None) -> TrainSummary:
    """Train; resumable with cfg.resume. `should_stop(step)` ends the run early (as a kill would)."""
    run = setup(cfg)
    if announce:
        announce(run.plan)
    position, losses, stopped = train(run, progress, should_stop)
    if not stopped:
        finalize(run, position)
    first, last = (losses[0], losses[-1]) if losses else (None, None)
    return TrainSummary(run.out, position.step, first, last, time.perf_counter() - run.started, losses,
                        len(run.plan.bad_videos), len(run.plan.long_rows.skipped), len(run.plan.long_rows.truncated))


def setup(cfg: TrainConfig) -> TrainSetup:
    """Check the output and the cache, pool, build the model, data loader, optimizer; resume if asked."""
    pin_mmap_threshold()  # flat memory over many videos (redvillm/memory.py)
    started = time.perf_counter()
    info = distributed.init_from_env()
    device = distributed.resolve_device(cfg.device, info)
    dtype = distributed.resolve_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output)
    _check_output(out, cfg.resume, cfg.overwrite and info.is_main)
    cache, family, instructions, missing, pooled, bad_videos, skipped = _training_rows(cfg, info)
    llm = _build_model(cfg, device, dtype, info)
    context = context_length(llm.backbone.config, llm.chat.tokenizer)
    video_tokens = llm.adapter.layout.num_video_tokens(cache.info["num_frames"],
                                                       pooled.get(instructions[0].video_id)[1].shape[0])
    instructions, long_rows = within_context(instructions, llm.chat, video_tokens, context, cfg.annotations)
    skipped.update(rows_longer_than_context=long_rows.skipped, rows_answer_cut_to_context=long_rows.truncated,
                   context_tokens=context)
    dataset = InstructionDataset(instructions, llm.chat, pooled, video_tokens, context)
    sampler = ResumableSampler(dataset, info.world_size, info.rank, cfg.seed)
    micro = cfg.micro_batch_size(info.world_size)
    loader = DataLoader(dataset, batch_size=micro, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=partial(collate_items, batcher=llm.batcher),
                        persistent_workers=cfg.num_workers > 0,
                        pin_memory=device.type == "cuda")
    steps_per_epoch = math.ceil(math.ceil(len(dataset) / info.world_size / micro) / cfg.grad_accum)
    total_steps = min(cfg.max_steps or 10**12, steps_per_epoch * cfg.epochs)
    optimizer = torch.optim.AdamW(llm.adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_warmup_cosine, total=total_steps,
                                                                     warmup=round(cfg.warmup_ratio * total_steps)))
    fingerprint = _fingerprint(cfg, info.world_size, len(dataset))
    position = checkpoint.Position()
    if cfg.resume and checkpoint.exists(out):
        position = checkpoint.load(out, llm.adapter, optimizer, scheduler, fingerprint, device)
    if info.is_main:
        _start_output(out, cfg, skipped, position.step)
    plan = TrainPlan(len(instructions), len({i.video_id for i in instructions}), sum(missing.values()),
                     list(missing)[:5], llm.trainable_parameters(), micro, info.world_size, steps_per_epoch,
                     total_steps, position.step, bad_videos, long_rows, context)
    autocast = torch.autocast(device.type, dtype=dtype) if device.type == "cuda" and dtype != torch.float32 \
        else contextlib.nullcontext()
    return TrainSetup(cfg, info, device, out, cache.info, family, llm, dataset, sampler, loader, optimizer, scheduler,
                      fingerprint, position, plan, autocast, started)


def _training_rows(cfg: TrainConfig, info):
    """The instructions to train on, their videos' pooled tokens (built here, each rank its share),
    and what was left out: (cache, family, instructions, missing, pooled, bad videos, skipped record)."""
    cache = open_cache(cfg.cache)
    family = family_for_cache(cfg.model, cfg.revision, cache.info)
    _check_cache(cache, family, cfg)
    instructions, missing = usable(read_instructions(cfg.annotations), cache, cfg.annotations, cfg.strict)
    pooled = PooledStore(cache, family.pool, family.name, cfg.pooled_dir)
    pooled.build({i.video_id for i in instructions}, info.rank, info.world_size)
    distributed.barrier()  # every rank's pooled files exist before anyone reads them
    bad = pooled.bad_videos({i.video_id for i in instructions})
    instructions, bad_rows = without_bad_videos(instructions, bad, cfg.annotations, cfg.strict)
    skipped = {"bad_videos": [{"video_id": v, "shard": bad[v].shard, "why": bad[v].why, "rows": n}
                              for v, n in sorted(bad_rows.items())],
               "rows_without_cached_video": sum(missing.values())}
    return cache, family, instructions, missing, pooled, [bad[v] for v in bad_rows], skipped


def _build_model(cfg: TrainConfig, device: torch.device, dtype: torch.dtype, info) -> VideoLLM:
    """The frozen backbone with a fresh adapter; the adapter alone wrapped in DDP over several ranks."""
    llm = build_video_llm(cfg.model, cfg.pooling, cfg.temporal_module, device, dtype, cfg.revision, cfg.seed)
    if cfg.gradient_checkpointing:
        llm.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if info.world_size > 1:
        llm.adapter_forward = DistributedDataParallel(llm.adapter, device_ids=[device.index] if device.type == "cuda" else None)
    return llm


def _start_output(out: Path, cfg: TrainConfig, skipped: dict, step: int) -> None:
    """The run's config and what it left out, written before the first step; the log cut back to `step`."""
    out.mkdir(parents=True, exist_ok=True)
    with checkpoint.disk_full(out, 2**16):
        write_json(out / TRAIN_CONFIG_FILE, cfg.to_dict())
        write_json(out / SKIPPED_FILE, skipped)
    checkpoint.trim_log(out / LOG_FILE, step)


def train(run: TrainSetup, progress: Callable[[TrainProgress], None] | None = None,
          should_stop: Callable[[int], bool] | None = None) -> tuple[checkpoint.Position, list[float], bool]:
    """The epochs from run.position on: (where training ended, the step losses, stopped early)."""
    cfg, info, sampler, position, losses = run.cfg, run.info, run.sampler, run.position, []
    micro = run.plan.micro_batch
    run.llm.adapter.train()
    rate = _Rate(info.world_size)
    for epoch in range(position.epoch, cfg.epochs):
        skip = position.step_in_epoch * cfg.grad_accum * micro if epoch == position.epoch else 0
        sampler.set_position(epoch, skip)
        batches = iter(run.loader)
        step_in_epoch = position.step_in_epoch if epoch == position.epoch else 0
        while position.step < run.plan.total_steps:
            micro_batches = list(islice(batches, cfg.grad_accum))
            if not micro_batches:
                break
            loss = run.step(micro_batches, position.step + 1)
            step_in_epoch += 1
            position = checkpoint.Position(position.step + 1, epoch, step_in_epoch)
            losses.append(loss)
            _report(run, position, loss, rate.add(micro_batches), progress)
            stop = should_stop is not None and should_stop(position.step)
            if position.step % cfg.save_every == 0 or stop:
                if info.is_main:
                    checkpoint.save(run.out, run.llm.adapter, run.optimizer, run.scheduler, position, run.fingerprint)
                distributed.barrier()
            if stop:
                return position, losses, True
        if position.step >= run.plan.total_steps:
            break
        position = checkpoint.Position(position.step, epoch + 1, 0)
    return position, losses, False


class _Rate:
    """Samples and tokens (text + video) per second since training began, over all ranks."""

    def __init__(self, world_size: int):
        self.world_size, self.started, self.samples, self.tokens = world_size, time.perf_counter(), 0, 0

    def add(self, micro_batches) -> tuple[float, float]:
        self.samples += sum(b.batch.input_ids.shape[0] for b in micro_batches) * self.world_size
        self.tokens += sum(int(b.batch.attention_mask.sum()) for b in micro_batches) * self.world_size
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return self.samples / elapsed, self.tokens / elapsed


def _report(run: TrainSetup, position: checkpoint.Position, loss: float, rates: tuple[float, float],
            progress: Callable[[TrainProgress], None] | None) -> None:
    """The step's log record (main rank, every log_every steps and the last) and progress callback."""
    (rate, tokens_rate), lr, out = rates, run.scheduler.get_last_lr()[0], run.out
    if run.info.is_main and (position.step % run.cfg.log_every == 0 or position.step == run.plan.total_steps):
        record = {"step": position.step, "epoch": position.epoch, "loss": loss, "lr": lr, "samples_per_s": rate,
                  "tokens_per_s": tokens_rate}
        with checkpoint.disk_full(out / LOG_FILE, 4096, f"; {checkpoint.kept_line(out)}"):
            append_journal(out / LOG_FILE, [record], sync=False)
    if progress:
        progress(TrainProgress(position.step, run.plan.total_steps, position.epoch, loss, lr, rate))


def finalize(run: TrainSetup, position: checkpoint.Position) -> None:
    """The last checkpoint (so a rerun is a no-op) and the run's final weights with their config."""
    cfg, out, info = run.cfg, run.out, run.cache_info
    if run.info.is_main:
        checkpoint.save(out, run.llm.adapter, run.optimizer, run.scheduler, position, run.fingerprint)
        config = VideoModelConfig(cfg.model, run.family.revision, run.family.name, cfg.pooling, cfg.temporal_module,
                                  info["num_frames"], info["num_patches"], info["hidden_size"],
                                  cfg.seed, extra={"train": cfg.to_dict(), "cache": info})
        adapter_bytes = sum(v.numel() * v.element_size() for v in run.llm.adapter.state_dict().values())
        with checkpoint.disk_full(out / ADAPTER_FILE, adapter_bytes, f"; {checkpoint.kept_line(out)}",
                                  cleanup=adapter_tmp(out)):
            save_adapter(run.llm, out, config)
    distributed.barrier()


def _step(llm, micro_batches, optimizer, scheduler, cfg, device, autocast, world_size, step, out) -> float:
    """One optimizer step over grad_accum micro-batches; the loss is the mean over every answer
    token of the global batch (summed per rank, divided by the global count). A non-finite loss
    or gradient stops the run before the weights are touched."""
    batches = [b.batch.to(device) for b in micro_batches]
    local_tokens = sum(int((b.labels[:, 1:] != -100).sum()) for b in batches)
    problems = [p for b in micro_batches for p in b.problems]
    counts = torch.tensor([local_tokens, len(problems)], dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(counts)  # one collective: token count, and whether any rank drew a bad sample
    if counts[1].item():
        raise UserError(problems[0] if problems else "another rank drew a sample with non-finite pooled tokens "
                        "(that rank's error names it)")
    total_tokens = max(counts[0].item(), 1.0)
    loss_value = 0.0
    for i, batch in enumerate(batches):
        syncing = i == len(batches) - 1 or world_size == 1
        sync = contextlib.nullcontext() if syncing else llm.adapter_forward.no_sync()
        with sync, autocast:
            loss_sum, _ = llm.loss_terms(batch)
            # DDP averages gradients over ranks; scaling by world size turns that into a sum.
            (loss_sum * world_size / total_tokens).backward()
        loss_value += loss_sum.item()
    if world_size > 1:
        summed = torch.tensor([loss_value], dtype=torch.float64, device=device)
        dist.all_reduce(summed)
        loss_value = summed.item()
    parameters = list(llm.adapter.parameters())
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    _stop_if_nonfinite(loss_value / total_tokens, grad_norm, micro_batches, step, world_size, out)
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(parameters, cfg.max_grad_norm, grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value / total_tokens


def _stop_if_nonfinite(loss: float, grad_norm: torch.Tensor, micro_batches, step: int, world_size: int,
                       out: Path) -> None:
    """Raise, naming the step and the batch's videos, if the loss or the gradient is not finite.

    Every rank sees the same all-reduced loss and synchronised gradients, so all raise together."""
    norm = grad_norm.item()
    if math.isfinite(loss) and math.isfinite(norm):
        return
    video_ids = _gather([v for b in micro_batches for v in b.video_ids], world_size)
    shown = ", ".join(sorted(set(video_ids))[:8]) + (" ..." if len(set(video_ids)) > 8 else "")
    latest = checkpoint.latest_step(out)
    kept = (f"the last good checkpoint (step {latest}) stays the latest; fix the cause (those videos' tokens, a "
            "lower --lr) and --resume from it" if latest is not None else
            "no checkpoint was written before it; fix the cause (those videos' tokens, a lower --lr) and rerun")
    raise UserError(f"{out}: step {step}: loss {loss} / gradient norm {norm} is not finite on the batch of "
                    f"videos {shown}; training stopped before updating any weight, {kept}")


def _gather(video_ids: list[str], world_size: int) -> list[str]:
    """Every rank's video ids (a collective: every rank calls it)."""
    if world_size == 1:
        return video_ids
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, video_ids)
    return [v for ids in gathered for v in ids]


def _warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _check_output(out: Path, resume: bool, overwrite: bool) -> None:
    if overwrite and out.exists():
        if not (checkpoint.exists(out) or has_adapter(out) or (out / TRAIN_CONFIG_FILE).exists()):
            raise UserError(f"{out}: --overwrite only replaces a training run, and this folder does not hold one")
        shutil.rmtree(out)
    distributed.barrier()
    if not resume and (checkpoint.exists(out) or has_adapter(out)):
        raise UserError(f"{out}: holds a training run already; pass --resume to continue it, --overwrite to "
                        "replace it, or pick a new --output")


def _check_cache(cache, family, cfg: TrainConfig) -> None:
    """The cache must hold this backbone's vision features (redvillm.cache.cache_mismatch)."""
    wanted = {"family": family.name, "model": model_identity(cfg.model), "revision": family.revision,
              "vision": family.vision_provenance(), "image_size": family.frame_preprocess().fixed_output_hw(),
              "hidden_size": family.frame_token_width()}
    why = cache_mismatch(cache.info, wanted, wanted_as=f"for --model {cfg.model}")
    if why:
        raise UserError(f"{cfg.cache}: extracted for {cache.info['model']} ({cache.info['family']}), not for "
                        f"--model {cfg.model} ({family.name}): {why}; "
                        f"re-extract with `redvillm-extract VIDEOS NEW.h5 --model {cfg.model}`, "
                        f"or train with --model {cache.info['model']}")


def _fingerprint(cfg: TrainConfig, world_size: int, samples: int) -> dict:
    keys = ("model", "pooling", "temporal_module", "lr", "epochs", "batch_size", "grad_accum", "warmup_ratio",
            "weight_decay", "seed", "max_steps")
    return {**{k: getattr(cfg, k) for k in keys}, "world_size": world_size, "samples": samples}


__all__ = ["run_train", "setup", "train", "finalize", "TrainSetup", "TrainPlan", "TrainProgress", "TrainSummary"]
