"""Decoding in worker processes that may hang, crash or leak without taking the run down.

decord is unmaintained: on some files it hangs while holding the GIL, segfaults, or leaks
memory. So each worker is a separate process (extract/worker.py, forked from a forkserver)
that decodes one video at a time, samples its frames, applies the backbone's resize/crop unless
the encoder's device does it (DecodeSettings.resize), and hands the uint8 frames over through
shared memory (extract/handoff.py). The parent kills a worker that exceeds the per-video
timeout, replaces a worker that died, and recycles every worker after ``recycle_after`` videos.
A worker exits when the parent dies (killed or crashed): it never lingers, re-parented, on a
stuck file. While the parent encodes one video, the workers are already decoding the next ones.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from redvillm.extract.handoff import LostFrames, SharedFrames, block_name, discard, take
from redvillm.extract.videos import not_a_video_file
from redvillm.extract.worker import STARTED, worker_main
from redvillm.extras import require
from redvillm.frames import FramePreprocess


@dataclass(frozen=True)
class DecodeJob:
    video_id: str
    path: Path
    retry: bool = False  # the video timed out in the previous run: this is its one retry


# A decode timeout is retried once on the next run (a loaded machine, a slow disk can cause it);
# timing out again on that retry is recorded as final.
TIMED_OUT = "decode timed out"
RETRY_NOTE = "; retried once on the next run"


def retry_due(reason: str) -> bool:
    """Whether a recorded failure is a first timeout, to be decoded once more."""
    return reason.endswith(RETRY_NOTE)


def _timeout_reason(job: DecodeJob, timeout: float) -> str:
    if job.retry:
        return (f"{TIMED_OUT} after {timeout:g}s again on its retry (worker killed); not retried again: "
                "pass --retry-failed, with a longer --decode-timeout if it needs one")
    return f"{TIMED_OUT} after {timeout:g}s (worker killed){RETRY_NOTE}"


@dataclass(frozen=True)
class DecodeSettings:
    num_frames: int
    sampling_rule: str
    short_videos: str
    preprocess: FramePreprocess
    # Frames per get_batch. decord keeps its position between calls, so chunks cost no extra seeks:
    # measured on long-GOP 640x480 clips (bench/decode.py), chunks of 16 take as much CPU as one
    # get_batch of all T at T=16 and 100, and 0.76x at T=300 (one big batch pays for its fresh
    # memory), and bound a worker's memory on 4K video.
    chunk: int = 16
    # False: the frames leave the worker at source resolution and the encoder's process resizes
    # them on its device (on a GPU, which spares the decoders about a third of their CPU work).
    resize: bool = True
    # ... except a video whose sampled source frames exceed this many bytes, resized here anyway:
    # 100 4K frames are 2.5 GB, held once per worker running ahead plus once by the encoder.
    source_budget: int = 1 << 30

    def resizes(self, frames: int, height: int, width: int) -> bool:
        """Whether the worker applies the geometry to `frames` sampled frames of this size."""
        return self.resize or frames * height * width * 3 > self.source_budget


def resize_in_workers(device, resize_on: str = "auto") -> bool:
    """Where frames are resized: "workers", "device" (the encoder's), or "auto": in the workers
    when the encoder is on CPU (the same cores either way, and the pipe carries small frames)."""
    if resize_on not in ("auto", "workers", "device"):
        raise ValueError(f"resize_on must be auto, workers or device, got {resize_on!r}")
    return resize_on == "workers" or (resize_on == "auto" and device.type == "cpu")


@dataclass
class DecodeResult:
    job: DecodeJob
    frames: np.ndarray | None = None  # (T, 3, h, w) uint8 if `resized`, else (T, H, W, 3) source frames
    meta: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    resized: bool = True  # False: the encoder's process applies the geometry (DecodeSettings.resize)
    shared: SharedFrames | None = None  # in transit: where the frames wait; the pool reads them into `frames`


def decode_video(path: Path, settings: DecodeSettings, allocate=np.empty) -> tuple[np.ndarray, dict]:
    """Sample one video's frames, resized if settings.resizes(...): ((T, 3, h, w) or (T, H, W, 3)
    uint8, per-video metadata). The frames are written into ``allocate(shape)``, which is returned."""
    import decord
    import torch

    from redvillm.extract.sampling import sample_indices

    if not path.exists():
        raise FileNotFoundError("file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    total = len(reader)
    if total == 0:
        raise ValueError("no decodable video frames")
    indices = sample_indices(total, settings.num_frames, settings.sampling_rule, settings.short_videos)
    frames = resize = None  # known once the first frames are decoded: their size decides
    for start in range(0, len(indices), settings.chunk):
        batch = reader.get_batch(indices[start : start + settings.chunk].tolist()).asnumpy()  # (c, H, W, 3)
        if resize is None:
            resize = settings.resizes(len(indices), *batch.shape[1:3])
        part = _resize(torch.from_numpy(batch), settings.preprocess) if resize else batch
        if frames is None:
            frames = allocate((len(indices), *part.shape[1:]))
        frames[start : start + len(part)] = part
    height, width = batch.shape[1:3]
    fps = float(reader.get_avg_fps())
    meta = {
        "frame_indices": indices.astype(np.int64),
        "source_frames": total,
        "source_fps": fps,
        "duration_s": total / fps if fps > 0 else 0.0,
        "height": int(height),
        "width": int(width),
    }
    return frames, meta



# Frames resized at once, as float32 bytes: under glibc's largest mmap threshold (32 MB), so the
# float buffers are reused from the heap rather than mapped and page-faulted afresh on every call.
# Measured on 640x480 frames: 9.2 ms per frame in batches of 16 (59 MB), 5.9 ms here; 1080p:
# 43.8 -> 29.1 ms. The pixels are the same (tests/test_cores.py).
RESIZE_BYTES = 16 << 20


def _resize(frames, preprocess) -> np.ndarray:
    """(c, H, W, 3) uint8 -> (c, 3, h, w) uint8, the backbone's geometry, a few frames at a time."""
    from redvillm.frames import resize_and_crop

    step = max(1, RESIZE_BYTES // (frames[0].numel() * 4))
    return np.concatenate([resize_and_crop(frames[s : s + step], preprocess).numpy()
                           for s in range(0, len(frames), step)])


def _decodable(jobs: Iterable[DecodeJob], rejected: list[DecodeResult]) -> Iterator[DecodeJob]:
    """The jobs whose path is a regular file; the others go to `rejected` with their reason, as
    opening a FIFO would block a worker until the timeout (or for ever)."""
    for job in jobs:
        problem = not_a_video_file(Path(job.path))
        if problem is None:
            yield job
        else:
            rejected.append(DecodeResult(job, error=problem))


@dataclass
class _Worker:
    process: mp.Process
    conn: Connection
    job: DecodeJob | None = None
    block: str | None = None  # the shared-memory name sent with the job: removed if the worker dies
    sent: float = 0.0  # when the job went down the pipe
    started: float | None = None  # when the worker began decoding it (its STARTED message)
    handled: int = 0

    def deadline(self, timeout: float, startup: float) -> float:
        return self.started + timeout if self.started is not None else self.sent + startup


# What a decoder imports before its first video, once per run in the forkserver (seconds for torch).
PRELOAD = ["torch", "decord", "redvillm.extract.worker", "redvillm.extract.sampling", "redvillm.frames"]


def decoder_context():
    """How decoder processes start: forked from a forkserver that imported PRELOAD once, so a
    worker (first, recycled or replacing a killed one) is ready in milliseconds instead of the
    seconds a fresh interpreter takes to import torch, which on a small machine competed with
    loading the encoder and delayed the first video. Never a plain fork of the extractor, which
    holds torch threads (and CUDA). Spawn where there is no forkserver (Windows)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # no effect if this process's forkserver already runs
    return context


def warm_up_decoders() -> None:
    """Start the forkserver now (it imports PRELOAD in the background) so that the DecodePool made
    later, once the encoder is loaded, forks its workers at once instead of waiting for it."""
    context = decoder_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


class DecodePool:
    """``imap(jobs)`` yields a DecodeResult per job, in completion order."""

    def __init__(self, settings: DecodeSettings, num_workers: int = 2, timeout: float = 120.0,
                 recycle_after: int = 100, startup_timeout: float = 300.0):
        """timeout: seconds one video may decode (counted from the worker's start of decoding);
        startup_timeout: seconds a (re)spawned worker may take to import its libraries."""
        # Here, not in the workers: a worker without decord would record every video as failed.
        require("decord", purpose="decoding videos")
        self.settings, self.timeout, self.recycle_after = settings, timeout, recycle_after
        self.startup_timeout = startup_timeout
        self._ctx = decoder_context()
        self._workers = [self._spawn() for _ in range(num_workers)]
        self.decode_seconds = 0.0  # summed over the results: how busy the decoders were

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        # The kernel's death signal follows the thread that forked: the forkserver's only one, or ours.
        forked_by_server = self._ctx.get_start_method() == "forkserver"
        deathsig = forked_by_server or threading.current_thread() is threading.main_thread()
        process = self._ctx.Process(target=worker_main, args=(child, self.settings, os.getpid(), deathsig),
                                    daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def imap(self, jobs: Iterable[DecodeJob]) -> Iterator[DecodeResult]:
        rejected: list[DecodeResult] = []  # no regular file (FIFO, folder, dangling link): never sent
        pending = _decodable(jobs, rejected)
        if not self._workers and next(pending, None) is not None:
            raise ValueError("a DecodePool without workers cannot decode")
        self._refill(pending)
        while True:
            yield from rejected
            rejected.clear()
            busy = [w for w in self._workers if w.job is not None]
            if not busy:
                return
            ready = wait([w.conn for w in busy], timeout=self._next_deadline(busy))
            results = []
            for worker in busy:
                if worker.conn in ready:
                    results.append(self._receive(worker))
                elif time.perf_counter() > worker.deadline(self.timeout, self.startup_timeout):
                    results.append(self._kill(worker, _timeout_reason(worker.job, self.timeout)
                                              if worker.started is not None else
                                              f"decoder process did not start within {self.startup_timeout:g}s"
                                              f" (worker killed){RETRY_NOTE}"))
            results = [r for r in results if r is not None]  # None: a worker only said it started
            # Idle workers get their next video before the consumer spends time on these results.
            self._refill(pending)
            yield from results

    def _refill(self, pending: Iterator[DecodeJob]) -> None:
        for i, worker in enumerate(self._workers):
            while worker.job is None:
                job = next(pending, None)
                if job is None:
                    return
                worker = self._workers[i] = self._fresh(worker)
                try:
                    self._assign(worker, job)
                except (BrokenPipeError, OSError):  # died while idle: replace it, resend the job
                    worker.job = job
                    self._kill(worker, "decoder process died while idle")
                    worker = self._workers[i]
                    self._assign(worker, job)

    def _assign(self, worker: _Worker, job: DecodeJob) -> None:
        name = block_name()
        worker.conn.send((job, name))
        worker.job, worker.block, worker.sent, worker.started = job, name, time.perf_counter(), None

    def _next_deadline(self, busy: list[_Worker]) -> float:
        now = time.perf_counter()
        return max(0.01, min(w.deadline(self.timeout, self.startup_timeout) - now for w in busy))

    def _receive(self, worker: _Worker) -> DecodeResult | None:
        job = worker.job
        try:
            result = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=5)
            return self._kill(worker, f"decoder process died (exit code {worker.process.exitcode})")
        if result == STARTED:
            worker.started = time.perf_counter()
            return None
        worker.job, worker.block, worker.handled = None, None, worker.handled + 1
        assert result.job == job
        self.decode_seconds += result.seconds
        if result.shared is not None:
            try:
                result.frames = take(result.shared)
            except LostFrames as err:  # e.g. /dev/shm cleaned under a running extraction
                result.error = str(err)
            result.shared = None
        return result

    def _kill(self, worker: _Worker, reason: str) -> DecodeResult:
        job = worker.job
        self._end(worker)
        index = self._workers.index(worker)
        self._workers[index] = self._spawn()
        return DecodeResult(job, error=reason, seconds=time.perf_counter() - (worker.started or worker.sent))

    def _fresh(self, worker: _Worker) -> _Worker:
        """Replace a worker that has decoded enough videos to have leaked noticeably."""
        if worker.handled < self.recycle_after:
            return worker
        self._stop(worker)
        return self._spawn()

    def _stop(self, worker: _Worker) -> None:
        self._ask_to_exit(worker)
        self._reap(worker)

    @staticmethod
    def _ask_to_exit(worker: _Worker) -> None:
        try:
            worker.conn.send(None)
        except OSError:
            pass

    @staticmethod
    def _reap(worker: _Worker) -> None:
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()

    def _end(self, worker: _Worker) -> None:
        """Kill a busy worker and remove the frames it may have begun to write."""
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
        if worker.block is not None:
            discard(worker.block)

    def close(self) -> None:
        """Kill the busy workers; the idle ones are all told to exit first, then reaped."""
        idle = [w for w in self._workers if w.job is None]
        for worker in idle:
            self._ask_to_exit(worker)
        for worker in self._workers:
            if worker.job is not None:
                self._end(worker)
        for worker in idle:
            self._reap(worker)
        self._workers = []

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
