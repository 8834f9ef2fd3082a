"""Disk space: refuse a run the disk cannot hold before it starts, and a full disk in one line.

A cached video takes T x N x D x 2 bytes in a raw cache, (T + N') x D' x 2 in a pooled one
(float16; checksums, chunk index and per-video metadata add a few KB per video, under 1% of a
real video's tokens in either store). HDF5 keeps writing into a file after a failed write and can crash the process
when it closes it, so a full disk is handled by truncating the shard being written (freeing its
space) before closing it, then removing it: complete shards are kept, and the same command
resumes once space is freed.
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

from redvillm.cache import RAW
from redvillm.errors import UserError


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class StoredSize:
    """The shape of what one video stores: raw (T, N, D), or pooled (T, N', D') meaning the sets
    (T, D') and (N', D') (redvillm.cache)."""

    store: str
    frames: int  # T
    units: int  # N, or N' pooled
    width: int  # D, or D' pooled

    @property
    def bytes(self) -> int:
        count = self.frames * self.units if self.store == RAW else self.frames + self.units
        return count * self.width * 2  # float16

    def formula(self) -> str:
        t, n, d = self.frames, self.units, self.width
        return f"T {t} x N {n} x D {d} x 2 bytes" if self.store == RAW else f"(T {t} + N' {n}) x D' {d} x 2 bytes"

    def shapes(self) -> str:
        t, n, d = self.frames, self.units, self.width
        return f"(T, N, D) = {(t, n, d)}" if self.store == RAW else f"temporal (T, D') = {(t, d)}, spatial (N', D') = {(n, d)}"


def check_space(directory: Path, videos: int, size: StoredSize, skip: bool) -> str:
    """The estimate as one line; UserError instead if the disk holding `directory` cannot take it."""
    need = videos * size.bytes
    free = shutil.disk_usage(directory).free
    line = f"{directory}: this run writes about {human(need)} ({videos} videos x {size.formula()}); {human(free)} free there"
    if need > free and not skip:
        raise UserError(f"{line}: not enough; free {human(need - free)} or more, write to another OUT, "
                        "or pass --no-space-check to start anyway")
    return line


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and (err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err))


def disk_full(directory: Path, videos_left: int, size: StoredSize) -> UserError:
    free = shutil.disk_usage(directory).free
    need = videos_left * size.bytes
    return UserError(f"{directory}: disk full ({human(free)} free); the {videos_left} videos left need about "
                     f"{human(need)} more; free space and rerun the same command to resume (complete shards are kept)")
