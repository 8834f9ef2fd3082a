"""The token cache: the contract between stage one (extract) and stage two (train/eval).

``redvillm-extract VIDEOS OUT.h5`` writes::

    OUT.h5                      the index, small; rewritten atomically (temp + rename)
      attrs  format="redvillm-cache", format_version=1,
             info=JSON           provenance shared by every video (see CacheInfo)
             extract_config=JSON the resolved ExtractConfig of the run that last wrote it
      shards       (S,) str      shard file names, relative to OUT.shards/
      video_ids    (V,) str      sorted
      video_shard  (V,) int32    position of each video's shard in `shards`
    OUT.shards/
      r{rank:03d}-{seq:05d}.h5  a complete shard; written as .tmp-r{rank:03d}-{seq:05d}.h5 and
                                renamed once closed, so a killed writer never leaves a shard
                                that looks complete
        attrs  format, format_version, info (same JSON as the index)
        videos/<video_id>       (T, N, D) float16, contiguous, one dataset per video, with attrs
               frame_indices (T,) int64   decoded frame numbers (repeats = a short video)
               source_frames int, source_fps float, duration_s float, height int, width int,
               path str (as given to extract)
      failures-r{rank:03d}.jsonl one line per video that could not be cached:
                                {"video_id", "path", "reason", "size", "mtime_ns"}

Readers never depend on the index being fresh: every complete shard carries its own ``info``,
and re-running extract with nothing left to do rebuilds the index from the shards.
Shape letters: T frames, N patches per frame, D vision width.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from redvillm.errors import UserError

FORMAT = "redvillm-cache"
FORMAT_VERSION = 1
SHARD_GLOB = "r*-*.h5"


class BadTokens(UserError):
    """One video's tokens cannot be trusted: unreadable (checksum, I/O) or not finite.

    Readers raise it for that video only; callers that can go on without the video (the pooled
    sidecar, training, predict) catch it, count the video as skipped and report ``video_id`` and
    ``shard``, or stop under ``--strict``.
    """

    def __init__(self, video_id: str, shard: Path | str, why: str):
        super().__init__(f"{shard}: video {video_id!r}: {why}; rerun the same redvillm-extract command to repair")
        self.video_id, self.shard, self.why = video_id, str(shard), why


@dataclass(frozen=True)
class CacheInfo:
    """Provenance shared by every video of a cache; stage two sizes itself from it."""

    family: str
    model: str
    revision: str | None
    vision: dict  # family-specific: vision layer, token selection, ...
    image_size: tuple[int, int]  # (height, width) of a preprocessed frame
    num_frames: int  # T requested (a `keep`-policy short video may have fewer rows)
    num_patches: int  # N
    hidden_size: int  # D
    sampling_rule: str
    short_videos: str
    compute_dtype: str  # dtype the encoder ran in; tokens are stored as float16
    redvillm_version: str
    storage_dtype: str = "float16"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CacheInfo:
        data = json.loads(text)
        data["image_size"] = tuple(data["image_size"])
        return cls(**data)


# What decides whether cached tokens fit a model, most telling first: tokens of another family,
# vision layer or frame size are other numbers altogether; then the checkpoint itself.
TOKEN_FIT_KEYS = ("family", "vision", "image_size", "num_patches", "hidden_size", "model", "revision")
# How the frames were picked: tokens of another T or sampling rule still fit the model, but give
# another benchmark number than the training setting (predict warns and records these).
FRAME_KEYS = ("num_frames", "sampling_rule", "short_videos")


def cache_mismatch(cached: CacheInfo | Mapping, wanted: CacheInfo | Mapping, *, append: bool = False,
                   cached_as: str = "in the cache", wanted_as: str = "here") -> str | None:
    """Why tokens recorded as `cached` are wrong for `wanted`, as one phrase; None when they fit.

    This is the one compatibility check between a cache and its user. Reading (train, predict,
    answering from cached tokens) compares TOKEN_FIT_KEYS: family, vision provenance (layer,
    token selection, frame size), N, D and the checkpoint (model, revision); a key `wanted` does
    not state (absent or None) is not compared, so a caller states what it knows. Appending to a
    cache (`append=True`) compares every field but the package version and `extra`: one cache
    holds tokens of one configuration only.
    """
    mine, theirs = _as_dict(cached), _as_dict(wanted)
    if append:
        keys = [k for k in (*TOKEN_FIT_KEYS, *mine) if k not in ("redvillm_version", "extra")]
    else:
        keys = [k for k in TOKEN_FIT_KEYS if theirs.get(k) is not None]
    for key in dict.fromkeys(keys):
        have, want = mine.get(key), theirs.get(key)
        if isinstance(have, Mapping) and isinstance(want, Mapping):
            for sub in sorted(set(have) | set(want)):
                if _canonical(have.get(sub)) != _canonical(want.get(sub)):
                    return f"{key}.{sub} is {have.get(sub)!r} {cached_as}, {want.get(sub)!r} {wanted_as}"
        elif _canonical(have) != _canonical(want):
            return f"{key} is {have!r} {cached_as}, {want!r} {wanted_as}"
    return None


def frame_differences(cached: CacheInfo | Mapping, trained: CacheInfo | Mapping) -> dict[str, dict]:
    """FRAME_KEYS on which `cached` differs from `trained`: {key: {"training": a, "this cache": b}}."""
    mine, theirs = _as_dict(cached), _as_dict(trained)
    return {k: {"training": theirs.get(k), "this cache": mine.get(k)} for k in FRAME_KEYS
            if k in theirs and _canonical(mine.get(k)) != _canonical(theirs.get(k))}


def model_identity(model: str) -> str:
    """How caches and runs name a checkpoint: a local directory by its absolute path (so a run
    loads from any working directory), a hub id as given (its commit is recorded as revision)."""
    local = Path(model).expanduser()
    return str(local.resolve()) if local.is_dir() else model


def _as_dict(info: CacheInfo | Mapping) -> dict:
    return asdict(info) if isinstance(info, CacheInfo) else dict(info)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)  # tuples and lists alike, as JSON stores them


def shards_dir(index_path: Path) -> Path:
    return index_path.with_suffix(".shards") if index_path.suffix == ".h5" else Path(f"{index_path}.shards")


def open_cache(path: str | os.PathLike) -> TokenCache:
    """Read-only mapping ``video_id -> np.ndarray (T, N, D)`` over a cache written by extract.

    Opening reads the index only; tokens are read when a video is asked for.
    """
    return TokenCache(Path(path))


class TokenCache(Mapping):
    """See ``open_cache``. Safe to use in DataLoader workers: files are reopened after fork."""

    def __init__(self, path: Path, max_open_files: int = 16):
        self.path = path
        if not path.is_file():
            raise UserError(f"{path}: no such cache; create it with `redvillm-extract VIDEOS {path}`")
        try:
            with h5py.File(path, "r") as f:
                _check_format(f, path)
                self.info = json.loads(f.attrs["info"])
                self.extract_config = json.loads(f.attrs.get("extract_config", "{}"))
                shard_names = [s.decode() if isinstance(s, bytes) else s for s in f["shards"][()]]
                ids = [s.decode() if isinstance(s, bytes) else s for s in f["video_ids"][()]]
                shard_of = f["video_shard"][()]
        except OSError as err:
            raise UserError(f"{path}: not a readable HDF5 cache index ({err}); rerun redvillm-extract") from None
        self.shard_paths = [shards_dir(path) / name for name in shard_names]
        self._shard_of = dict(zip(ids, shard_of.tolist()))
        self._ids = ids
        self._files: OrderedDict[int, h5py.File] = OrderedDict()
        self._max_open = max_open_files
        self._pid = os.getpid()

    @property
    def cache_info(self) -> CacheInfo:
        return CacheInfo.from_json(json.dumps(self.info))

    def __getitem__(self, video_id: str) -> np.ndarray:
        return self._dataset(video_id)[()]  # (T, N, D) float16

    def shard_path(self, video_id: str) -> Path:
        """The shard file holding this video's tokens."""
        return self.shard_paths[self._shard_of[video_id]]

    def meta(self, video_id: str) -> dict:
        """Per-video provenance: frame indices, source fps/frames/duration, size, path."""
        attrs = self._dataset(video_id).attrs
        return {k: (v.tolist() if isinstance(v, np.ndarray) else _plain(v)) for k, v in attrs.items()}

    def __contains__(self, video_id) -> bool:
        return video_id in self._shard_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _dataset(self, video_id: str) -> h5py.Dataset:
        try:
            shard = self._shard_of[video_id]
        except KeyError:
            raise KeyError(f"{video_id!r} is not in {self.path}") from None
        return self._file(shard)["videos"][video_id]

    def _file(self, shard: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked (DataLoader worker): never share HDF5 handles
            self._files = OrderedDict()
            self._pid = os.getpid()
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        path = self.shard_paths[shard]
        try:
            handle = h5py.File(path, "r")
        except OSError as err:
            raise UserError(f"{path}: cannot open cache shard ({err}); rerun redvillm-extract to repair") from None
        self._files[shard] = handle
        if len(self._files) > self._max_open:
            self._files.popitem(last=False)[1].close()
        return handle


def _check_format(f: h5py.File, path: Path) -> None:
    if f.attrs.get("format") != FORMAT:
        raise UserError(f"{path}: not a redvillm cache (no format={FORMAT!r} attribute)")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise UserError(f"{path}: cache format v{version}, this redvillm reads v{FORMAT_VERSION}; re-extract")


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
