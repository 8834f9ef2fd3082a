"""Repairing a damaged cache by rerunning extract: damaged shards are set aside, never deleted.

A shard that cannot be opened, has no readable header, or (under ``--verify``) holds a video
whose checksum, read or finite check fails is renamed ``<shard>.damaged`` (kept for a look, and
invisible to readers and to the next run); its videos are then missing from the cache, so the
same run extracts them again. A lost or truncated index needs nothing here: every run rebuilds
it from the complete shards at its end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py

from redvillm.cache import HDF5_DAMAGE, POOLED_SETS, all_finite, count_nonfinite, error_line, shard_videos

DAMAGED_SUFFIX = ".damaged"


def set_aside_damaged(shards: list[Path], verify: bool) -> list[str]:
    """Rename every damaged shard of `shards`; one line per shard saying what and why."""
    notes = []
    for shard in shards:
        why = shard_damage(shard, verify)
        if why is None:
            continue
        target = _free_name(shard)
        try:
            os.replace(shard, target)
        except FileNotFoundError:  # another part of a --num-shards job set it aside first
            continue
        notes.append(f"{shard}: {why}; set aside as {target.name}, its videos are extracted again")
    return notes


def shard_damage(shard: Path, verify: bool) -> str | None:
    """Why this shard cannot be trusted, or None. Without `verify` only the header and listing are read."""
    try:
        with h5py.File(shard, "r") as f:
            json.loads(f.attrs["info"])
            videos = shard_videos(f)
            if verify:
                return _first_bad_video(f, videos)
    except HDF5_DAMAGE as err:
        return f"unreadable shard ({error_line(err)})"
    return None


def _first_bad_video(f: h5py.File, videos: dict[str, str]) -> str | None:
    for video_id, name in videos.items():
        try:
            node = f["videos"][name]  # raw: the tokens; pooled: a group of the two sets
            stored = [node[()]] if isinstance(node, h5py.Dataset) else [node[key][()] for key in POOLED_SETS]
        except HDF5_DAMAGE as err:
            return f"video {video_id!r} is unreadable ({error_line(err)})"
        for tokens in stored:
            if not all_finite(tokens):
                return f"video {video_id!r} has {count_nonfinite(tokens)} non-finite token values"
    return None


def _free_name(shard: Path) -> Path:
    target, n = shard.with_name(shard.name + DAMAGED_SUFFIX), 1
    while target.exists():
        n += 1
        target = shard.with_name(f"{shard.name}{DAMAGED_SUFFIX}-{n}")
    return target

