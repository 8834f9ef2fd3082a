"""``run_extract``: videos -> frozen vision encoder -> HDF5 token cache (stage one).

Shape letters: T frames, N patches per frame, D vision width.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import redvillm
from redvillm import distributed
from redvillm.memory import pin_mmap_threshold
from redvillm.cache import CacheInfo
from redvillm.errors import UserError
from redvillm.extract.config import ExtractConfig
from redvillm.extract.decode import DecodeJob, DecodePool, DecodeResult, DecodeSettings, retry_due
from redvillm.extract.store import CacheStore, Failure
from redvillm.extract.videos import Video, find_videos
from redvillm.families.registry import load_family

log = logging.getLogger(__name__)


@dataclass
class ExtractProgress:
    """What a progress display needs after each video."""

    done: int  # videos handled by this process in this run (cached or failed)
    total: int  # videos this process has to handle in this run
    frames: int  # frames encoded so far
    failed: int
    video_id: str


@dataclass
class ExtractSummary:
    index: Path
    found: int  # videos in VIDEOS
    already_cached: int  # skipped: in a complete shard from an earlier run
    skipped_failures: int  # skipped: failed before and the file is unchanged
    extracted: int  # cached by this process in this run
    failures: list[Failure] = field(default_factory=list)  # failed in this run
    frames: int = 0
    seconds: float = 0.0
    cached_total: int = 0  # videos in the index at the end (all ranks)
    rank: int = 0
    token_shape: tuple[int, int, int] = (0, 0, 0)  # (T, N, D) of a video with T frames or more


def run_extract(cfg: ExtractConfig, progress: Callable[[ExtractProgress], None] | None = None) -> ExtractSummary:
    """Cache every video's (T, N, D) frame tokens; resumable, shardable across processes.

    Decoders are spawned processes: a script calling this must guard its own top level with
    ``if __name__ == "__main__":`` (as any multiprocessing program must).
    """
    pin_mmap_threshold()  # flat memory over many videos (redvillm/memory.py)
    started = time.perf_counter()
    dist_info = distributed.init_from_env()
    rank, world = _partition(cfg, dist_info)
    videos = find_videos(cfg.videos)
    device = distributed.resolve_device(cfg.device, dist_info)
    dtype = distributed.resolve_dtype(cfg.dtype, device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.encoder_threads())  # leave the decoders their cores
    family = load_family(cfg.model, cfg.revision, cfg.image_size)
    encoder = family.load_frame_encoder(device, dtype)
    preprocess = family.frame_preprocess()
    info = _cache_info(cfg, family, encoder, preprocess, dtype)

    index = Path(cfg.output)
    if dist_info.is_main:
        store = CacheStore(index, info, overwrite=cfg.overwrite)
    distributed.barrier()  # rank 0 has removed an overwritten cache before anyone reads it
    store = CacheStore(index, info) if not dist_info.is_main else store
    store.check_compatible()

    done, failed_before = store.done_ids(), store.failures()
    mine = videos[rank::world]
    todo = [v for v in mine if v.video_id not in done]
    retry = {v.video_id for v in todo if v.video_id in failed_before and retry_due(failed_before[v.video_id].reason)}
    skip = {v.video_id for v in todo if not cfg.retry_failed and v.video_id in failed_before
            and v.video_id not in retry and failed_before[v.video_id].unchanged()}
    todo = [v for v in todo if v.video_id not in skip]
    summary = ExtractSummary(index, len(videos), len(mine) - len(todo) - len(skip), len(skip), 0, rank=rank,
                             token_shape=(info.num_frames, info.num_patches, info.hidden_size))

    settings = DecodeSettings(cfg.num_frames, cfg.sampling, cfg.short_videos, preprocess)
    writer = store.shard_writer(rank, cfg.shard_bytes)
    jobs = (DecodeJob(v.video_id, v.path, retry=v.video_id in retry) for v in todo)
    workers = min(cfg.decode_workers, len(todo))  # none at all when everything is cached
    with DecodePool(settings, workers, cfg.decode_timeout, cfg.recycle_after) as pool:
        for i, result in enumerate(pool.imap(jobs), 1):
            _handle(result, encoder, cfg, store, writer, summary, dist_info, device, dtype, preprocess)
            if progress:
                progress(ExtractProgress(i, len(todo), summary.frames, len(summary.failures), result.job.video_id))
    if writer.close_shard() is not None:
        log.debug("closed the last shard of rank %d", rank)
    distributed.barrier()  # every rank's shards are complete before the index is built
    if dist_info.is_main or cfg.num_shards is not None:
        summary.cached_total = store.write_index(cfg.to_dict())
    summary.seconds = time.perf_counter() - started
    return summary


def _partition(cfg: ExtractConfig, dist_info) -> tuple[int, int]:
    """This process's slice of the sorted video list: videos[rank::world].

    The slice is taken over *all* videos, not the ones left, so that no coordination is needed
    on resume: a video belongs to one rank whatever has been done before.
    """
    if cfg.num_shards is not None:
        if dist_info.world_size > 1:
            raise ValueError("--num-shards/--shard-index and torchrun are exclusive: use one of them")
        return cfg.shard_index, cfg.num_shards
    return dist_info.rank, dist_info.world_size


def _handle(result: DecodeResult, encoder, cfg, store, writer, summary, dist_info, device, dtype, preprocess):
    job = result.job
    if result.error is not None:
        failure = Failure.of(job.video_id, job.path, result.error)
        store.record_failure(summary.rank, failure)
        summary.failures.append(failure)
        log.info("%s: %s", job.path, result.error)  # shown in the summary
        return
    tokens = encode_frames(encoder, torch.from_numpy(result.frames), cfg.batch_size, device, dtype, preprocess)
    attrs = dict(result.meta, path=str(job.path))
    if writer.add(job.video_id, tokens, attrs) is not None and dist_info.is_main:
        store.write_index(cfg.to_dict())  # readers see progress shard by shard
    summary.extracted += 1
    summary.frames += tokens.shape[0]


def encode_frames(encoder, frames: torch.Tensor, batch_size: int, device: torch.device, dtype: torch.dtype,
                  preprocess) -> np.ndarray:
    """(T, 3, h, w) uint8 -> (T, N, D) float16 tokens, `batch_size` frames per forward."""
    from redvillm.frames import normalize

    parts = []
    with torch.inference_mode():
        for start in range(0, frames.shape[0], batch_size):
            batch = frames[start : start + batch_size].to(device, non_blocking=True)
            pixel_values = normalize(batch, preprocess, dtype)  # (b, 3, h, w)
            parts.append(encoder(pixel_values).to("cpu", torch.float16))  # (b, N, D)
    return torch.cat(parts).numpy()


def _cache_info(cfg: ExtractConfig, family, encoder, preprocess, dtype: torch.dtype) -> CacheInfo:
    image_hw = preprocess.fixed_output_hw()
    if image_hw is None:
        raise UserError(f"{cfg.model}: its image processor keeps the aspect ratio without cropping, so frames "
                        "of different videos would give different N; redvillm needs a fixed frame size")
    local = Path(cfg.model)
    return CacheInfo(
        family=family.name,
        model=str(local.resolve()) if local.is_dir() else cfg.model,
        revision=family.revision,
        vision=family.vision_provenance(),
        image_size=tuple(image_hw),
        num_frames=cfg.num_frames,
        num_patches=encoder.num_patches,
        hidden_size=encoder.hidden_size,
        sampling_rule=cfg.sampling,
        short_videos=cfg.short_videos,
        compute_dtype=str(dtype).removeprefix("torch."),
        redvillm_version=redvillm.__version__,
    )


__all__ = ["run_extract", "encode_frames", "ExtractSummary", "ExtractProgress", "Video"]
