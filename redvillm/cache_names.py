"""How a video id becomes the name of its entry in a shard, and back (rule: redvillm/cache.py)."""

from __future__ import annotations

from urllib.parse import quote, unquote_to_bytes


def dataset_name(video_id: str) -> str:
    """The HDF5 dataset name of a video id: the id itself when HDF5 and file systems can hold it."""
    if _plain_name(video_id):
        return video_id
    return "~" + quote(video_id.encode("utf-8", "surrogateescape"), safe="")


def video_id_of(name: str) -> str:
    """The video id of a dataset name written by ``dataset_name`` (its inverse)."""
    if not name.startswith("~"):
        return name
    return unquote_to_bytes(name[1:]).decode("utf-8", "surrogateescape")


def _plain_name(video_id: str) -> bool:
    if video_id in ("", ".", "..") or video_id.startswith("~") or video_id != video_id.strip():
        return False
    if "/" in video_id or not video_id.isprintable():
        return False
    try:
        video_id.encode("utf-8")  # a non-UTF-8 file name arrives with surrogate escapes
    except UnicodeEncodeError:
        return False
    return True
