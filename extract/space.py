"""Disk space: refuse a run the disk cannot hold before it starts, and a full disk in one line.

A cached video takes T x N x D x 2 bytes (float16; the checksums and per-frame chunk index add
well under 1%). HDF5 keeps writing into a file after a failed write and can crash the process
when it closes it, so a full disk is handled by truncating the shard being written (freeing its
space) before closing it, then removing it: complete shards are kept, and the same command
resumes once space is freed.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from redvillm.errors import UserError


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def check_space(directory: Path, videos: int, shape: tuple[int, int, int], skip: bool) -> str:
    """The estimate as one line; UserError instead if the disk holding `directory` cannot take it."""
    need = videos * video_bytes(shape)
    free = shutil.disk_usage(directory).free
    t, n, d = shape
    line = (f"{directory}: this run writes about {human(need)} ({videos} videos x T {t} x N {n} x D {d} x 2 bytes); "
            f"{human(free)} free there")
    if need > free and not skip:
        raise UserError(f"{line}: not enough; free {human(need - free)} or more, write to another OUT, "
                        "or pass --no-space-check to start anyway")
    return line


def video_bytes(shape: tuple[int, int, int]) -> int:
    t, n, d = shape
    return t * n * d * 2


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and (err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(err))


def disk_full(directory: Path, videos_left: int, shape: tuple[int, int, int]) -> UserError:
    free = shutil.disk_usage(directory).free
    need = videos_left * video_bytes(shape)
    return UserError(f"{directory}: disk full ({human(free)} free); the {videos_left} videos left need about "
                     f"{human(need)} more; free space and rerun the same command to resume (complete shards are kept)")
