"""Decoding in worker processes that may hang, crash or leak without taking the run down.

decord is unmaintained: on some files it hangs while holding the GIL, segfaults, or leaks
memory. So each worker is a separate (spawned) process that decodes one video at a time,
samples its frames, applies the backbone's resize/crop (uint8 out, so little crosses the pipe)
and sends the result back. The parent kills a worker that exceeds the per-video timeout,
replaces a worker that died, and recycles every worker after ``recycle_after`` videos. A worker
exits when the parent dies (killed or crashed): it never lingers, re-parented, on a stuck file.
While the parent encodes one video, the workers are already decoding the next ones.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from redvillm.extract.videos import not_a_video_file
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
STARTED = "started"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h  # a worker's message when it begins decoding: the timeout counts from there


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
    chunk: int = 16  # frames decoded and resized at once: bounds worker memory on 4K video


@dataclass
class DecodeResult:
    job: DecodeJob
    frames: np.ndarray | None = None  # (T, 3, h, w) uint8, preprocessed geometry
    meta: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


def decode_video(path: Path, settings: DecodeSettings) -> tuple[np.ndarray, dict]:
    """Sample and resize one video's frames: ((T, 3, h, w) uint8, per-video metadata)."""
    import decord
    import torch

    from redvillm.extract.sampling import sample_indices
    from redvillm.frames import resize_and_crop

    if not path.exists():
        raise FileNotFoundError("file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    total = len(reader)
    if total == 0:
        raise ValueError("no decodable video frames")
    indices = sample_indices(total, settings.num_frames, settings.sampling_rule, settings.short_videos)
    parts = []
    for start in range(0, len(indices), settings.chunk):
        batch = reader.get_batch(indices[start : start + settings.chunk].tolist()).asnumpy()  # (c, H, W, 3)
        parts.append(resize_and_crop(torch.from_numpy(batch), settings.preprocess))
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
    return torch.cat(parts).numpy(), meta


def _worker_main(conn: Connection, settings: DecodeSettings, parent_pid: int, deathsig: bool, busy) -> None:
    _exit_with_parent(parent_pid, deathsig)
    import decord  # noqa: F401 - imported before the first video, so its timeout counts decoding only
    import torch

    import redvillm.extract.sampling  # noqa: F401

    torch.set_num_threads(1)  # parallelism comes from the number of workers
    _capture_native_stderr()
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(STARTED)
        busy.value = 1  # read by the parent to give the encoder the cores no decoder uses
        started = time.perf_counter()
        os.ftruncate(2, 0)
        os.lseek(2, 0, os.SEEK_SET)
        try:
            frames, meta = decode_video(job.path, settings)
            result = DecodeResult(job, frames, meta, seconds=time.perf_counter() - started)
        except Exception as err:  # noqa: BLE001 - any decoder error is a per-video failure
            result = DecodeResult(job, error=explain(err, _native_messages()), seconds=time.perf_counter() - started)
        busy.value = 0
        conn.send(result)


def _exit_with_parent(parent_pid: int, deathsig: bool) -> None:
    """A worker must not outlive its extractor: after a kill -9 of the parent it would be
    re-parented and, stuck on a file, run for ever. On Linux the kernel kills it with the parent
    (PR_SET_PDEATHSIG; only asked for when spawned from the main thread, as the signal follows
    the spawning thread); everywhere a watchdog thread exits once the parent is gone (it also
    covers a hang that holds the GIL only where the kernel signal exists)."""
    if deathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the watchdog below still applies
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watchdog").start()


def _watch_parent(parent_pid: int, every: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        time.sleep(every)
    os._exit(1)


def _capture_native_stderr() -> None:
    """FFmpeg and decord print to fd 2 from C; keep it out of the user's terminal and use it
    to explain failures instead. The file is unlinked at once: nothing is left behind."""
    fd, name = tempfile.mkstemp(prefix="redvillm-decode-", suffix=".log")
    os.dup2(fd, 2)
    os.close(fd)
    os.unlink(name)


def _native_messages() -> list[str]:
    size = os.lseek(2, 0, os.SEEK_CUR)
    text = os.pread(2, min(size, 1 << 16), max(0, size - (1 << 16))).decode("utf-8", "replace")
    # "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55f9] moov atom not found" -> "moov atom not found"
    lines = [re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\] ", "", line).strip() for line in text.splitlines()]
    return [line for line in lines if line and not re.match(r"^\[[\d:]+\] ", line)]


def explain(err: Exception, native: list[str] = ()) -> str:
    """One readable line for a decoder error (decord's carry a timestamp and a C++ source line)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = re.sub(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? ERROR )?", "", text)
    if "cannot find video stream" in text:
        return "no video stream (audio-only file, or not a video)"
    if text.startswith("Error reading") and native:
        return f"not a readable video: {native[-1]}"
    reason = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return f"{reason} ({native[-1]})" if native else reason


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
    busy: object  # a shared byte: 1 while the worker decodes
    job: DecodeJob | None = None
    sent: float = 0.0  # when the job went down the pipe
    started: float | None = None  # when the worker began decoding it (its STARTED message)
    handled: int = 0

    def deadline(self, timeout: float, startup: float) -> float:
        return self.started + timeout if self.started is not None else self.sent + startup


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
        self._ctx = mp.get_context("spawn")  # never fork a parent holding torch threads or CUDA
        self._workers = [self._spawn() for _ in range(num_workers)]
        self.decode_seconds = 0.0  # summed over the results: how busy the decoders were

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def decoding_now(self) -> int:
        """How many workers are decoding at this moment (not idle, not waiting to hand a result over)."""
        return sum(w.busy.value for w in self._workers if w.job is not None)

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        deathsig = threading.current_thread() is threading.main_thread()
        busy = self._ctx.RawValue("b", 0)
        process = self._ctx.Process(target=_worker_main, args=(child, self.settings, os.getpid(), deathsig, busy),
                                    daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent, busy)

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
                    worker.conn.send(job)
                    worker.job, worker.sent, worker.started = job, time.perf_counter(), None
                except (BrokenPipeError, OSError):  # died while idle: replace it, resend the job
                    worker.job = job
                    self._kill(worker, "decoder process died while idle")
                    worker = self._workers[i]
                    worker.conn.send(job)
                    worker.job, worker.sent, worker.started = job, time.perf_counter(), None

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
        worker.job, worker.handled = None, worker.handled + 1
        assert result.job == job
        self.decode_seconds += result.seconds
        return result

    def _kill(self, worker: _Worker, reason: str) -> DecodeResult:
        job = worker.job
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
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
        try:
            worker.conn.send(None)
        except OSError:
            pass
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()

    def close(self) -> None:
        for worker in self._workers:
            if worker.job is not None:
                worker.process.kill()
                worker.process.join()
                worker.conn.close()
            else:
                self._stop(worker)
        self._workers = []

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
