"""What runs inside a decoder process (extract/decode.py's DecodePool starts and watches them).

A worker takes (job, block name) messages, says STARTED, decodes the video into the shared
block (extract/handoff.py) and sends a DecodeResult; a None message ends it.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from redvillm.extract.handoff import FrameBlock

if TYPE_CHECKING:
    from redvillm.extract.decode import DecodeJob, DecodeResult, DecodeSettings

STARTED = "started"  # a worker's message when it begins decoding: the timeout counts from there
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_main(conn: Connection, settings: DecodeSettings, parent_pid: int, deathsig: bool) -> None:
    _lower_priority()  # first: the imports below (when not preloaded) must not slow the encoder's loading
    _exit_with_parent(parent_pid, deathsig)
    import decord  # noqa: F401 - imported before the first video, so its timeout counts decoding only
    import torch

    import redvillm.extract.sampling  # noqa: F401

    torch.set_num_threads(1)  # parallelism comes from the number of workers
    _capture_native_stderr()
    while True:
        message = conn.recv()
        if message is None:  # nothing to flush or clean: skip the interpreter's (and torch's) slow teardown
            os._exit(0)
        job, name = message  # name: the shared-memory block for this video's frames (None: the pipe)
        conn.send(STARTED)
        os.ftruncate(2, 0)
        os.lseek(2, 0, os.SEEK_SET)
        result = _decode_job(job, FrameBlock(name), settings)
        conn.send(result)


def _decode_job(job: DecodeJob, block: FrameBlock, settings: DecodeSettings) -> DecodeResult:
    from redvillm.extract.decode import DecodeResult, decode_video  # here: decode.py imports this module

    started = time.perf_counter()
    try:
        frames, meta = decode_video(job.path, settings, block.allocate)
    except Exception as err:  # noqa: BLE001 - any decoder error is a per-video failure
        error = explain(err, _native_messages())
    else:
        shared = block.describe(frames)
        result = DecodeResult(job, None if shared else frames, meta, shared=shared,
                              resized=settings.resizes(len(frames), meta["height"], meta["width"]),
                              seconds=time.perf_counter() - started)
        del frames  # the last view of the block: it can be unmapped (the parent removes it)
        block.close()
        return result
    block.discard()  # outside the except clause: the traceback, holding views of the block, is gone
    return DecodeResult(job, error=error, seconds=time.perf_counter() - started)


def _exit_with_parent(extractor_pid: int, deathsig: bool) -> None:
    """A worker must not outlive its extractor: after a kill -9 of the extractor it would be
    re-parented and, stuck on a file, run for ever. On Linux the kernel kills it when its parent
    exits (PR_SET_PDEATHSIG): the extractor, or the forkserver it was forked from, which exits
    with the extractor. Everywhere, a watchdog thread exits once the extractor is gone or the
    worker was re-parented (it also covers a hang that holds the GIL only where the kernel
    signal exists)."""
    if deathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the watchdog below still applies
    parent = os.getppid()
    if parent == 1 or not _running(extractor_pid):  # gone before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(extractor_pid, parent), daemon=True, name="parent-watchdog").start()


def _watch_parent(extractor_pid: int, parent: int, every: float = 0.5) -> None:
    while os.getppid() == parent and _running(extractor_pid):
        time.sleep(every)
    os._exit(1)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (not ours: pid reused), still "there"
        return True
    return True


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


DECODER_NICENESS = 10


def _lower_priority() -> None:
    """Decoders yield the CPU to the encoder: they only have to stay a few videos ahead of it, so when
    both want a core the encoder gets it, and whenever the encoder waits (decoding is behind) every
    core is the decoders'. The scheduler does this per time slice, finer than any split we could set."""
    try:
        os.nice(DECODER_NICENESS)
    except (AttributeError, OSError):
        pass  # not on this platform, or not allowed: equal priority, still correct
