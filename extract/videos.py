"""Finding the videos to extract: a folder (recursive) or a text/JSON list of paths."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from redvillm.errors import UserError

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts"}


@dataclass(frozen=True)
class Video:
    video_id: str  # the file name without its extension
    path: Path


def find_videos(source: str | Path) -> list[Video]:
    """Videos sorted by id. Duplicate ids are refused before any work starts.

    Every entry with a video extension is kept, whatever it is: a FIFO, a dangling symbolic link
    or a folder named like a video is recorded as that video's failure (see `not_a_video_file`),
    never silently left out of the count.
    """
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source}: no such file or folder; pass a folder of videos or a .txt/.json list")
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        if not paths:
            known = ", ".join(sorted(VIDEO_EXTENSIONS))
            raise UserError(f"{source}: no video files in this folder or below (looked for {known})")
    elif source.suffix.lower() in VIDEO_EXTENSIONS:
        paths = [source]
    else:
        paths = _read_list(source)
    return _with_unique_ids(paths)


def not_a_video_file(path: Path) -> str | None:
    """Why `path` cannot be decoded without even opening it, or None for a regular file.

    Checked before any read: opening a FIFO blocks until a writer comes, which may be never.
    """
    if path.is_symlink() and not path.exists():
        return f"dangling symbolic link (points to {os.readlink(path)}, which does not exist)"
    if not path.exists():
        return "file not found"
    if path.is_dir():
        return "a folder, not a video file"
    if path.is_fifo():
        return "a FIFO (named pipe), not a regular file; not read, as reading it can block for ever"
    if not path.is_file():
        return "not a regular file (socket or device)"
    return None


def _read_list(source: Path) -> list[Path]:
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{source}: cannot read this video list ({err}); give a UTF-8 .txt or .json list") from None
    if source.suffix.lower() == ".json":
        entries = _json_entries(source, text)
    else:
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise UserError(f"{source}: the video list is empty")
    # Relative entries are relative to the list file, so a list travels with its videos.
    return [p if p.is_absolute() else source.parent / p for p in map(Path, entries)]


def _json_entries(source: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{source}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, list):
        raise UserError(f"{source}: expected a JSON list of paths (or of objects with a \"path\" field)")
    entries = []
    for i, item in enumerate(data):
        path = item.get("path") if isinstance(item, dict) else item
        if not isinstance(path, str):
            raise UserError(f"{source}: entry {i} is not a path string nor an object with a \"path\" field")
        entries.append(path)
    return entries


def _with_unique_ids(paths: list[Path]) -> list[Video]:
    by_id: dict[str, Path] = {}
    for path in paths:
        video_id = path.stem
        if video_id in by_id and by_id[video_id] != path:
            raise UserError(f"duplicate video id {video_id!r}: {by_id[video_id]} and {path}; "
                            "rename one (the id is the file name without extension)")
        by_id[video_id] = path
    return [Video(video_id, by_id[video_id]) for video_id in sorted(by_id)]
