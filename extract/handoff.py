"""Decoded frames from a decoder process to the encoder's, through shared memory.

Pickled down a pipe, a video's frames are copied three times (pickle, kernel pipe, unpickle);
at source resolution that is 0.6 GB per 100 1080p frames. Instead the worker writes the frames
straight into a POSIX shared-memory block (/dev/shm on Linux) and sends only its name, shape
and dtype; the parent maps the block (Linux; elsewhere it copies the frames out) and removes
its name at once.

Who removes a block, so none is left in /dev/shm:
- normally the parent, as soon as it has the result (``take``);
- the worker itself when the video fails after the block was made (``FrameBlock.discard``);
- the parent when it kills a worker (timeout) or finds it dead: the parent chose the block's
  name when it sent the job, so it can remove a block the worker never got to report (``discard``);
- the multiprocessing resource tracker when the parent dies: the worker's block is registered
  with it at creation, and the tracker (shared by the parent and its workers) unlinks
  what is still registered once all of them are gone. A block the parent removed is
  unregistered by that removal, so the tracker neither warns nor unlinks early.
When /dev/shm has no room for a video (a container's 64 MB default), the frames go down the pipe.
"""

from __future__ import annotations

import itertools
import mmap
import os
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

PREFIX = "redvillm_"
SHM_DIR = "/dev/shm"  # where POSIX shared memory lives on Linux (glibc's shm_open)
_serial = itertools.count()  # per process: two pools in one process never reuse a name


@dataclass(frozen=True)
class SharedFrames:
    """Where a worker left a video's frames: what crosses the pipe instead of the frames."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class LostFrames(Exception):
    """The block a result points to is gone or short: that video failed, the run goes on."""


def block_name() -> str:
    """A new block name, unique on this machine (pid + serial), short enough for macOS (31 chars)."""
    return f"{PREFIX}{os.getpid()}_{next(_serial)}"


class FrameBlock:
    """Worker side: the array decode_video writes a video's frames into."""

    def __init__(self, name: str | None):
        self.name = name  # None: no shared memory, the frames go down the pipe
        self.block: SharedMemory | None = None

    def allocate(self, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self.name is None or size == 0:
            return np.empty(shape, dtype)
        try:
            block = SharedMemory(self.name, create=True, size=size)
        except OSError:  # no shared memory here, or the name is taken (a pid reused after a crash)
            return np.empty(shape, dtype)
        if not _reserve(block, size):
            block.unlink()
            block.close()
            return np.empty(shape, dtype)
        self.block = block
        return np.ndarray(shape, dtype, buffer=block.buf)

    def describe(self, frames: np.ndarray) -> SharedFrames | None:
        """What to send for `frames` (the array ``allocate`` returned): None if it is not in a block."""
        if self.block is None:
            return None
        return SharedFrames(self.name, tuple(frames.shape), str(frames.dtype))

    def close(self) -> None:
        """Unmap the block, leaving it for the parent. Call after every view of it is dropped."""
        if self.block is not None:
            self.block.close()
            self.block = None

    def discard(self) -> None:
        """Remove the block: its video failed, nobody will read it."""
        if self.block is not None:
            _remove(self.block)  # first: unlinking works even while a view is still alive
            try:
                self.block.close()
            except BufferError:  # a view outlived the failure; the mapping goes with the process
                pass
            self.block = None


def _reserve(block: SharedMemory, size: int) -> bool:
    """Claim the block's pages now. tmpfs allocates on first write, and a write past /dev/shm's
    limit kills the writer with SIGBUS; posix_fallocate says ENOSPC instead. (The fd is
    SharedMemory's own; platforms without posix_fallocate keep the lazy behaviour.)"""
    fd = getattr(block, "_fd", -1)
    if fd < 0 or not hasattr(os, "posix_fallocate"):
        return True
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        return False
    return True


def take(ref: SharedFrames) -> np.ndarray:
    """Parent side: the frames of a block, whose name is removed at once (from here on nothing
    can be left in /dev/shm). LostFrames if the block is gone or short.

    Where blocks are files (Linux's /dev/shm) the array maps the block's pages, copy-on-write:
    no copy, and the pages are freed with the array. 100 1080p frames (622 MB) are ready in
    well under a millisecond instead of the 0.2-2 s a copy into fresh memory takes here."""
    lost = f"the decoded frames were lost: shared memory block {ref.name}"
    try:
        frames = _map(ref) if os.path.isdir(SHM_DIR) else _copy(ref)
    except (FileNotFoundError, ValueError) as err:  # ValueError: emptied, mmap and SharedMemory refuse it
        what = "removed" if isinstance(err, FileNotFoundError) else "emptied"
        raise LostFrames(f"{lost} was {what} before the extractor read it") from None
    if frames is None:
        raise LostFrames(f"{lost} is smaller than {ref.shape} {ref.dtype}: truncated by someone else")
    return frames


def _map(ref: SharedFrames) -> np.ndarray | None:
    path = os.path.join(SHM_DIR, ref.name)
    try:
        with open(path, "rb") as file:
            mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)  # writable, for torch.from_numpy
    finally:
        _unlink_path(ref.name)
        _forget(ref.name)
    count = int(np.prod(ref.shape))
    if len(mapping) < count * np.dtype(ref.dtype).itemsize:
        return None
    return np.frombuffer(mapping, np.dtype(ref.dtype), count).reshape(ref.shape)  # keeps the mapping alive


def _copy(ref: SharedFrames) -> np.ndarray | None:
    try:
        block = SharedMemory(ref.name)
    except (FileNotFoundError, ValueError):
        _forget(ref.name)
        raise
    try:
        # Our own memory, so the block can go at once; the view dies with this expression.
        return np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=block.buf).copy()
    except TypeError:  # "buffer is too small"
        return None
    finally:
        _remove(block)  # first: removal must not depend on the mapping closing
        block.close()


def discard(name: str) -> None:
    """Parent side: remove the block a killed or dead worker may have left under `name`."""
    try:
        block = SharedMemory(name)
    except FileNotFoundError:
        return  # never made (killed before its first frames) or already removed
    except ValueError:
        # Empty: the worker died between creating and sizing it, before registering it with the
        # tracker. SharedMemory cannot open an empty block, so remove it by its path (Linux).
        _unlink_path(name)
        return
    _remove(block)
    block.close()


def _remove(block: SharedMemory) -> None:
    try:
        block.unlink()
    except FileNotFoundError:  # removed by someone else meanwhile: only the registration is left
        _forget(block.name)


def _forget(name: str) -> None:
    """Drop the worker's registration of a block removed behind our back, or the resource tracker
    would report it leaked (and fail to remove it) when the extraction ends."""
    if os.name == "posix":  # elsewhere SharedMemory does not use the tracker
        resource_tracker.unregister("/" + name, "shared_memory")  # as SharedMemory registers it


def _unlink_path(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except OSError:
        pass
