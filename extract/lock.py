"""One writer per (OUT, rank): a second extraction into the same OUT stops with one line.

Each rank locks its own file beside OUT (``.OUT.h5.lock-r000``, ...), so the ranks of one
torchrun job (or the parts of a --num-shards array) write together, while a second copy of the
same command, which would write the same rank's shards, is refused. The lock is an
``fcntl.flock``: the kernel drops it when the process ends, however it ends, so a killed run
never leaves a stale lock behind. The file holds the pid of its holder, for the message.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from redvillm.errors import UserError


def lock_path(index_path: Path, rank: int) -> Path:
    return index_path.with_name(f".{index_path.name}.lock-r{rank:03d}")


@contextmanager
def lock_output(index_path: Path, rank: int):
    """Hold this rank's lock on OUT for the duration of the block, or raise UserError."""
    if not index_path.parent.is_dir():
        raise UserError(f"{index_path}: folder {index_path.parent} does not exist; create it first")
    path = lock_path(index_path, rank)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"{index_path}: cannot write there ({err.strerror}); pick a writable OUT") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"{index_path}: another redvillm-extract (pid {holder}) is writing it (rank {rank}); "
                            "wait for it to finish, or stop it and rerun this command to resume") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the pid is only for the message, the lock holds without it
            pass
        yield path
    finally:
        os.close(fd)  # releases the lock
