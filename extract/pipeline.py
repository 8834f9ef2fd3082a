"""``run_extract``: videos -> frozen vision encoder -> HDF5 token cache (stage one).

The cache holds each video's (T, N, D) tokens (``--store raw``) or only its pooled sets
(``--store pooled``, redvillm.cache); a pooled run pools each batch of frames as the encoder
gives it (redvillm.pooled_sets) and never holds a video's (T, N, D) tokens. VIDEOS may also be
a raw cache, pooled into OUT without decoding or encoding (extract/convert.py): both are a
*source* of per-video outcomes, and everything else (resume, failures, shards, the index,
disk space) is this module's, the same for both.
Shape letters: T frames, N patches per frame, D vision width.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import redvillm
from redvillm import distributed
from redvillm.memory import trim_heap
from redvillm.cache import RAW, CacheInfo
from redvillm.errors import UserError
from redvillm.extract.config import ExtractConfig
from redvillm.extract.cores import auto_decode_workers, encoder_threads
from redvillm.extract.decode import (DecodeJob, DecodePool, DecodeResult, DecodeSettings, resize_in_workers,
                                    retry_due, warm_up_decoders)
from redvillm.extract.lock import lock_output
from redvillm.extract.space import StoredSize, check_space, disk_full, is_disk_full
from redvillm.extract.store import CacheStore, Failure, NonFiniteTokens
from redvillm.extract.videos import Video, find_videos
from redvillm.families.registry import load_family
from redvillm.pooled_sets import PooledVideo, RunningPool, pooled_shape

log = logging.getLogger(__name__)


@dataclass
class ExtractProgress:
    """What a progress display needs after each video."""

    done: int  # videos handled by this process in this run (cached or failed)
    total: int  # videos this process has to handle in this run
    frames: int  # frames encoded (or read from a raw cache) so far
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
    size: StoredSize = StoredSize(RAW, 0, 0, 0)  # what a video with T frames or more stores
    from_cache: bool = False  # VIDEOS was a raw cache: pooled from its tokens, nothing encoded
    notes: list[str] = field(default_factory=list)  # what `notify` was told (shards set aside, ...)
    decode_workers: int = 0
    decode_seconds: float = 0.0  # summed over decoders: busy share = decode_seconds / (workers x seconds)
    encode_seconds: float = 0.0  # the encoder's time, from frames in to float16 tokens (or pooled sets) out

    def busy(self) -> tuple[float, float]:
        """(decoders, encoder): the share of this run's wall time each side was working."""
        if self.seconds <= 0:
            return 0.0, 0.0
        decoders = self.decode_seconds / (self.decode_workers * self.seconds) if self.decode_workers else 0.0
        return decoders, self.encode_seconds / self.seconds

    def load_line(self) -> str | None:
        """Which side limited the run, so the user knows what to scale (None when nothing was decoded)."""
        if not self.decode_workers:
            return None
        decoders, encoder = self.busy()
        if max(decoders, encoder) < 0.5:  # a short run: loading the model and starting workers took most of it
            side = "neither: most of the run was start-up (model load, decoder processes)"
        elif decoders >= encoder:
            side = "decoding: more CPUs (--decode-workers) would speed this up"
        else:
            side = "the encoder: a faster device or a larger --batch-size would speed this up"
        return (f"decoders busy {decoders:.0%} of the time ({self.decode_workers} processes), encoder {encoder:.0%}; "
                f"the limit was {side}")


@dataclass
class Outcome:
    """One video as a source gives it: what to store (tokens or pooled, by the store), or why not."""

    video_id: str
    path: Path
    error: str | None = None
    tokens: np.ndarray | None = None  # raw store: (T, N, D) float16
    pooled: PooledVideo | None = None  # pooled store
    attrs: dict = field(default_factory=dict)  # per-video provenance (redvillm.cache)
    frames: int = 0


def run_extract(cfg: ExtractConfig, progress: Callable[[ExtractProgress], None] | None = None,
                notify: Callable[[str], None] | None = None) -> ExtractSummary:
    """Cache every video's frame tokens or pooled sets (cfg.store); resumable, shardable across processes.

    `notify` gets one line per thing the user should know before the run goes on (a damaged
    shard set aside, an index to rebuild, the disk space the run needs); default: logged.

    Decoders are separate processes that import the calling script anew: it must guard its own
    top level with ``if __name__ == "__main__":`` (as any multiprocessing program must).
    """
    from redvillm.extract.convert import CachedSource, is_cache

    started = time.perf_counter()
    dist_info = distributed.init_from_env()
    rank, world = _partition(cfg, dist_info)
    source = CachedSource(cfg) if is_cache(cfg.videos) else EncodedSource(cfg)
    with lock_output(Path(cfg.output), rank):  # before anything is read or removed there
        try:
            source.prepare(dist_info, source.videos[rank::world])
            return _extract_locked(cfg, source, progress, notify or log.warning, dist_info, rank, world, started)
        finally:
            source.close()


class EncodedSource:
    """VIDEOS decoded in worker processes and encoded here: whole (raw) or pooled batch by batch."""

    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg
        self.videos: list[Video] = find_videos(cfg.videos)
        self.decode_workers, self.decode_seconds, self.encode_seconds = 0, 0.0, 0.0  # for the summary

    def prepare(self, dist_info, mine: list[Video]) -> None:
        """Load the encoder (after OUT is locked); sets `info` and `size`.

        The decoders' imports (torch and decord: seconds) run in the forkserver while the encoder
        loads, so that outcomes() forks its decoders at once (extract/decode.py)."""
        cfg = self.cfg
        if mine:
            warm_up_decoders()
        self.ranks_here = dist_info.local_world_size
        self.device = distributed.resolve_device(cfg.device, dist_info)
        self.dtype = distributed.resolve_dtype(cfg.dtype, self.device)
        if self.device.type == "cpu":  # every core: decoders yield (extract/cores.py)
            torch.set_num_threads(encoder_threads(cfg.threads, dist_info.local_world_size))
        self.family = load_family(cfg.model, cfg.revision, cfg.image_size)
        self.preprocess = self.family.frame_preprocess()
        self.encoder = self.family.load_frame_encoder(self.device, self.dtype)
        self.info = _cache_info(cfg, self.family, self.encoder, self.preprocess, self.dtype)
        units, width = self.encoder.num_patches, self.encoder.hidden_size
        if cfg.store != RAW:
            units, width = pooled_shape(self.family.pool, units, width)
        self.size = StoredSize(cfg.store, cfg.num_frames, units, width)

    @contextmanager
    def outcomes(self, todo: list[Video], retry: set[str]) -> Iterator[Iterator[Outcome]]:
        cfg = self.cfg
        settings = DecodeSettings(cfg.num_frames, cfg.sampling, cfg.short_videos, self.preprocess,
                                  resize=resize_in_workers(self.device, cfg.resize_on))
        jobs = (DecodeJob(v.video_id, v.path, retry=v.video_id in retry) for v in todo)
        wanted = (auto_decode_workers(self.device, self.ranks_here) if cfg.decode_workers == "auto"
                  else cfg.decode_workers)
        self.decode_workers = min(wanted, len(todo))  # none at all when everything is cached
        with DecodePool(settings, self.decode_workers, cfg.decode_timeout, cfg.recycle_after) as pool:
            try:
                yield (self._outcome(result) for result in pool.imap(jobs))
            finally:
                self.decode_seconds = pool.decode_seconds

    def close(self) -> None:
        """Nothing is held between calls: the decoders live and end inside outcomes()."""

    def _outcome(self, result: DecodeResult) -> Outcome:
        job = result.job
        if result.error is not None:
            return Outcome(job.video_id, job.path, error=result.error)
        frames = torch.from_numpy(result.frames)
        outcome = Outcome(job.video_id, job.path, attrs=dict(result.meta, path=str(job.path)), frames=len(frames))
        args = (self.encoder, frames, self.cfg.batch_size, self.device, self.dtype, self.preprocess)
        options = dict(resize=not result.resized)
        began = time.perf_counter()
        if self.cfg.store == RAW:
            outcome.tokens = encode_frames(*args, **options)
        else:
            outcome.pooled = encode_pooled(*args, pool=self.family.pool, **options)
        self.encode_seconds += time.perf_counter() - began
        return outcome


def _extract_locked(cfg: ExtractConfig, source, progress, notify, dist_info, rank: int, world: int,
                    started: float) -> ExtractSummary:
    info, videos = source.info, source.videos
    index = Path(cfg.output)
    notes: list[str] = []
    tell = lambda line: (notes.append(line), notify(line))  # noqa: E731
    store = _open_store(cfg, index, info, dist_info, tell)

    done, failed_before = store.done_ids(), store.failures()
    mine = videos[rank::world]
    todo = [v for v in mine if v.video_id not in done]
    retry = {v.video_id for v in todo if v.video_id in failed_before and retry_due(failed_before[v.video_id].reason)}
    skip = {v.video_id for v in todo if not cfg.retry_failed and v.video_id in failed_before
            and v.video_id not in retry and failed_before[v.video_id].unchanged()}
    todo = [v for v in todo if v.video_id not in skip]
    summary = ExtractSummary(index, len(videos), len(mine) - len(todo) - len(skip), len(skip), 0, rank=rank,
                             size=source.size, from_cache=not isinstance(source, EncodedSource))
    summary.notes = notes

    if todo and dist_info.is_main:  # torchrun ranks' parts differ by at most one video: rank 0 speaks for all
        tell(check_space(store.dir, len(todo) * dist_info.world_size, source.size, cfg.no_space_check))
    writer = store.shard_writer(rank, cfg.shard_bytes)
    try:
        with source.outcomes(todo, retry) as outcomes:
            for i, outcome in enumerate(outcomes, 1):
                _store(outcome, cfg, store, writer, summary, dist_info)
                video_id = outcome.video_id
                del outcome  # its tokens: freed before the heap is trimmed
                trim_heap()  # flat memory over many videos (redvillm/memory.py)
                if progress:
                    progress(ExtractProgress(i, len(todo), summary.frames, len(summary.failures), video_id))
        if isinstance(source, EncodedSource):
            summary.decode_workers, summary.decode_seconds = source.decode_workers, source.decode_seconds
            summary.encode_seconds = source.encode_seconds
        if writer.close_shard() is not None:
            log.debug("closed the last shard of rank %d", rank)
        distributed.barrier()  # every rank's shards are complete before the index is built
        if dist_info.is_main or cfg.num_shards is not None:
            summary.cached_total = store.write_index(cfg.to_dict())
    except OSError as err:
        if not is_disk_full(err):
            raise
        writer.abandon()
        left = len(todo) - summary.extracted - len(summary.failures)
        raise disk_full(store.dir, left, source.size) from None
    summary.seconds = time.perf_counter() - started
    return summary


def _open_store(cfg: ExtractConfig, index: Path, info: CacheInfo, dist_info, tell) -> CacheStore:
    """The store, once rank 0 has replaced (--overwrite) or repaired OUT; refuses a mismatched cache."""
    if dist_info.is_main:
        store = CacheStore(index, info, overwrite=cfg.overwrite)
        for line in store.set_aside_damaged(cfg.verify):
            tell(line)
    distributed.barrier()  # rank 0 has removed an overwritten cache / set damaged shards aside
    store = CacheStore(index, info) if not dist_info.is_main else store
    for line in store.check_compatible():
        if dist_info.is_main:  # one line per job, not per rank
            tell(line)
    return store


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


def _store(outcome: Outcome, cfg: ExtractConfig, store: CacheStore, writer, summary: ExtractSummary,
           dist_info) -> None:
    if outcome.error is not None:
        return _fail(outcome, outcome.error, store, summary)
    try:
        if outcome.pooled is None:
            completed = writer.add(outcome.video_id, outcome.tokens, outcome.attrs)
        else:
            completed = writer.add_pooled(outcome.video_id, outcome.pooled, outcome.attrs)
    except NonFiniteTokens as err:  # never stored: the video is recorded as failed instead
        return _fail(outcome, str(err), store, summary)
    if completed is not None and dist_info.is_main:
        store.write_index(cfg.to_dict())  # readers see progress shard by shard
    summary.extracted += 1
    summary.frames += outcome.frames


def _fail(outcome: Outcome, reason: str, store: CacheStore, summary: ExtractSummary) -> None:
    failure = Failure.of(outcome.video_id, outcome.path, reason)
    store.record_failure(summary.rank, failure)
    summary.failures.append(failure)
    log.info("%s: %s", outcome.path, reason)  # shown in the summary


def encode_batches(encoder, frames: torch.Tensor, batch_size: int, device: torch.device, dtype: torch.dtype,
                   preprocess, resize: bool = False) -> Iterator[torch.Tensor]:
    """(T, 3, h, w) uint8 -> (b, N, D) float16 tokens on the CPU, `batch_size` frames per forward, in order.

    `resize`: the frames are (T, H, W, 3) at source resolution; each batch gets the backbone's
    geometry (resize_and_crop, as the decoders would apply it) on `device` first."""
    from redvillm.frames import normalize, resize_and_crop

    with torch.inference_mode():
        for start in range(0, frames.shape[0], batch_size):
            batch = to_device(frames[start : start + batch_size], device)
            if resize:
                batch = resize_and_crop(batch, preprocess)  # (b, H, W, 3) -> (b, 3, h, w)
            pixel_values = normalize(batch, preprocess, dtype)  # (b, 3, h, w)
            yield encoder(pixel_values).to("cpu", torch.float16)  # (b, N, D)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One batch of frames onto the encoder's device. For a GPU they are staged in page-locked
    memory first (torch's caching host allocator reuses it batch after batch), so the copy is a
    direct DMA that does not block this thread; from pageable memory (the decoders' shared blocks)
    the driver would stage it itself, synchronously. On CPU: the batch itself."""
    if device.type != "cuda":
        return batch
    return batch.pin_memory().to(device, non_blocking=True)


def encode_frames(encoder, frames: torch.Tensor, batch_size: int, device: torch.device, dtype: torch.dtype,
                  preprocess, resize: bool = False) -> np.ndarray:
    """(T, 3, h, w) uint8 -> (T, N, D) float16 tokens, `batch_size` frames per forward (see encode_batches)."""
    batches = encode_batches(encoder, frames, batch_size, device, dtype, preprocess, resize)
    return torch.cat(list(batches)).numpy()


def encode_pooled(encoder, frames: torch.Tensor, batch_size: int, device: torch.device, dtype: torch.dtype,
                  preprocess, pool, resize: bool = False) -> PooledVideo:
    """(T, 3, h, w) uint8 -> the video's pooled sets, pooled batch by batch: never a (T, N, D) array."""
    running = RunningPool(pool)
    for tokens in encode_batches(encoder, frames, batch_size, device, dtype, preprocess, resize):
        running.add(tokens.numpy())
        del tokens  # not kept alive while the encoder computes the next batch
    return running.result()


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
        store=cfg.store,
    )


__all__ = ["run_extract", "encode_frames", "encode_pooled", "ExtractSummary", "ExtractProgress", "Outcome"]
