"""The token cache: the contract between stage one (extract) and stage two (train/eval).

A cache holds one of two stores, chosen by ``redvillm-extract --store``, never both:

- ``raw`` (default): each video's frame tokens X, (T, N, D) float16, exactly what the image
  LLM's projector would see. Any pooling or ablation over X can be computed from it (another
  frame subset, another pooling).
- ``pooled``: each video's two pooled sets only, as the family's pool gives them and as stage
  two reads them: temporal tokens (T, D') and spatial tokens (N', D') float16 (N', D': the
  family's token units, e.g. 2x2 merge groups of 4D channels). (T + N') x D' instead of
  T x N x D numbers: 1/85 of raw for llava-1.5-7b at T = 100 (1.4 MB instead of 118 MB). Every
  ablation of the paper (pooling both / time-averaged / frame-averaged, every temporal module)
  reads only these, and gives bit for bit the results of a raw cache of the same videos: both
  are pooled by ``redvillm.pooled_sets`` in one fixed order (each frame rounded to float16 first,
  running float32 sums in frame order, rounded to float16 at the end). Pooling is linear for
  every family (means, reshapes, a pixel shuffle, a fixed average pooling), so extraction keeps
  running sums per video and never holds its (T, N, D) tokens. A raw cache converts into a
  pooled one without decoding or encoding: ``redvillm-extract RAW.h5 OUT.h5 --store pooled``.

``redvillm-extract VIDEOS OUT.h5 [--store raw|pooled]`` writes::

    OUT.h5                      the index, small; rewritten atomically (temp + rename)
      attrs  format="redvillm-cache", format_version=1,
             info=JSON           provenance shared by every video (see CacheInfo), including
                                 store="raw"|"pooled" (absent in caches older than pooled ones: raw)
             extract_config=JSON the resolved ExtractConfig of the run that last wrote it
             checksum="fletcher32"   every shard's token datasets carry HDF5's checksum
                                     ("partial": some shards predate it)
             dataset_names="escaped" `video_ids` holds escaped ids (see below)
      shards       (S,) str      shard file names, relative to OUT.shards/
      video_ids    (V,) str      ``dataset_name(video_id)`` of every video, sorted by video id
      video_names  (V,) str      the name of each video's entry in its shard (differs from the
                                above only for a shard written before names were escaped)
      video_shard  (V,) int32    position of each video's shard in `shards`
    OUT.shards/
      r{rank:03d}-{seq:05d}.h5  a complete shard; written as .tmp-r{rank:03d}-{seq:05d}.h5 and
                                renamed once closed, so a killed writer never leaves a shard
                                that looks complete
        attrs  format, format_version, info (same JSON as the index), checksum, dataset_names
        videos/<name>           raw store: (T, N, D) float16 dataset, chunked one frame per chunk
                                pooled store: a group holding the datasets
                                    temporal (T, D') float16 and spatial (N', D') float16,
                                    one chunk each (the shard in HDF5 1.10's file format)
                                every token dataset with the fletcher32 checksum filter; attrs
                                of videos/<name> (the dataset, or the group):
               frame_indices (T,) int64   decoded frame numbers (repeats = a short video)
               source_frames int, source_fps float, duration_s float, height int, width int,
               path str (as given to extract)
      failures-r{rank:03d}.jsonl one line per video that could not be cached:
                                {"video_id", "path", "reason", "size", "mtime_ns"}

Only finite values are stored: a video whose frame tokens hold NaN/inf (after the float16
cast) is recorded as failed in either store. A dataset is named by its video id, unless HDF5
or a file system cannot hold that id as a name
(".", "..", "/", leading or trailing spaces, a leading "~", bytes that are not UTF-8): then the
name is "~" followed by the id's UTF-8 bytes percent-encoded (``dataset_name``); readers give
back the user's id. Caches written before these attributes existed (no ``checksum``, no
``dataset_names``) are read as before: contiguous unchecked datasets named by the raw id.
Readers check every video's tokens are finite and raise ``BadTokens`` for one that is not, or
whose checksum or read fails.

Readers never depend on the index being fresh: every complete shard carries its own ``info``,
and re-running extract with nothing left to do rebuilds the index from the shards. The one
compatibility check, ``cache_mismatch``, compares ``store`` with the rest when appending: pooled
tokens are never added to a raw cache, nor raw to a pooled one. Readers take either store
(``TokenCache.pooled``); only a raw cache gives (T, N, D) tokens (``TokenCache[video_id]``).
Shape letters: T frames, N patches, D vision width.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from redvillm.cache_names import video_id_of  # the naming rule of the docstring
from redvillm.errors import UserError

FORMAT = "redvillm-cache"
FORMAT_VERSION = 1
SHARD_GLOB = "r*-*.h5"
CHECKSUM = "fletcher32"  # value of the `checksum` attribute of shards and index written with it
ESCAPED_NAMES = "escaped"  # value of the `dataset_names` attribute (see the module docstring)
RAW, POOLED = "raw", "pooled"  # the two stores (CacheInfo.store)
STORES = (RAW, POOLED)
POOLED_SETS = ("temporal", "spatial")  # the datasets of a video's group in a pooled store, in that order


# What h5py raises on a damaged file: OSError for I/O errors and failed checksums, RuntimeError
# for damaged B-trees and symbol tables ("bad symbol table node signature"), KeyError, ValueError
# and TypeError for structure that is missing or garbled. Every reader of shards catches all of them.
HDF5_DAMAGE = (OSError, RuntimeError, KeyError, ValueError, TypeError)


class BadTokens(UserError):
    """One video's tokens cannot be trusted: unreadable (checksum, I/O) or not finite.

    Readers raise it for that video only; callers that can go on without the video (the pooled
    sidecar, training, predict) catch it, count the video as skipped and report ``video_id`` and
    ``shard``, or stop under ``--strict``.
    """

    def __init__(self, video_id: str, shard: Path | str, why: str):
        super().__init__(f"{shard}: video {video_id!r}: {why}; "
                         "rerun the same redvillm-extract command with --verify to repair")
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
    store: str = RAW  # RAW: (T, N, D) per video; POOLED: its pooled sets only (module docstring)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CacheInfo:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: Mapping) -> CacheInfo:
        return cls(**{**data, "image_size": tuple(data["image_size"])})


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
    return asdict(info) if isinstance(info, CacheInfo) else {"store": RAW, **info}  # older caches: raw


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)  # tuples and lists alike, as JSON stores them


def shards_dir(index_path: Path) -> Path:
    return index_path.with_suffix(".shards") if index_path.suffix == ".h5" else Path(f"{index_path}.shards")


def open_cache(path: str | os.PathLike) -> TokenCache:
    """Read-only mapping over the videos of a cache written by extract, of either store:
    ``cache[video_id]`` is a raw cache's np.ndarray (T, N, D), ``cache.pooled(video_id, pooler)``
    a video's pooled sets from either (``redvillm.pooled_sets.cached_tokens`` supplies the pooler).

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
                shard_names = [_text(s) for s in f["shards"][()]]
                keys = [_text(s) for s in f["video_ids"][()]]
                names = [_text(s) for s in f["video_names"][()]] if "video_names" in f else keys
                shard_of = f["video_shard"][()]
                escaped = f.attrs.get("dataset_names") == ESCAPED_NAMES
        except HDF5_DAMAGE as err:
            raise UserError(f"{path}: not a readable HDF5 cache index ({err}); rerun redvillm-extract") from None
        self.shard_paths = [shards_dir(path) / name for name in shard_names]
        ids = [video_id_of(key) for key in keys] if escaped else keys
        self._shard_of = dict(zip(ids, shard_of.tolist()))
        self._name_of = dict(zip(ids, names))
        self._ids = ids
        self.store = self.info.get("store", RAW)
        if self.store not in STORES:
            raise UserError(f"{path}: a cache of store {self.store!r}; this redvillm reads {' and '.join(STORES)} caches")
        self._files: OrderedDict[int, h5py.File] = OrderedDict()
        self._max_open = max_open_files
        self._pid = os.getpid()

    def __getitem__(self, video_id: str) -> np.ndarray:
        """(T, N, D) float16 tokens of a raw cache; ``BadTokens`` if they fail their checksum, the
        read, or are not finite. A pooled cache has none: UserError (read ``pooled`` instead)."""
        return self._finite(video_id, self.read_unchecked(video_id))

    def read_unchecked(self, video_id: str) -> np.ndarray:
        """The stored tokens without the finite check (HDF5's checksum still applies)."""
        if self.store != RAW:
            raise UserError(f"{self.path}: a pooled cache (extracted with --store pooled) holds each video's pooled "
                            "tokens only, not its (T, N, D) frame tokens; re-extract with --store raw for those")
        return self._read(video_id, self._dataset(video_id))

    def pooled(self, video_id: str, pooler: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None,
               check: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(temporal (T, D'), spatial (N', D')) float16 of either store: a pooled cache's own sets, or
        `pooler` (redvillm.pooled_sets) applied to a raw cache's (T, N, D) tokens. BadTokens as
        above; `check=False` leaves out the finite check (HDF5's checksum still applies)."""
        if self.store == RAW:
            return pooler(self[video_id] if check else self.read_unchecked(video_id))
        group = self._dataset(video_id)
        sets = tuple(self._read(video_id, group, name) for name in POOLED_SETS)
        return tuple(self._finite(video_id, values) for values in sets) if check else sets

    def _read(self, video_id: str, node, name: str | None = None) -> np.ndarray:
        try:
            return (node if name is None else node[name])[()]
        except HDF5_DAMAGE as err:  # fletcher32 mismatch, a torn block, an I/O error, a damaged B-tree
            raise BadTokens(video_id, self.shard_path(video_id), f"unreadable tokens ({error_line(err)})") from None

    def _finite(self, video_id: str, tokens: np.ndarray) -> np.ndarray:
        if not all_finite(tokens):
            bad = count_nonfinite(tokens)
            raise BadTokens(video_id, self.shard_path(video_id), f"{bad} of {tokens.size} token values are not finite")
        return tokens

    def stored_name(self, video_id: str) -> str:
        """The video's dataset name inside its shard (``dataset_name`` of the id, for new caches)."""
        return self._name_of[video_id]

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

    def _dataset(self, video_id: str) -> h5py.Dataset | h5py.Group:
        try:
            shard = self._shard_of[video_id]
        except KeyError:
            raise KeyError(f"{video_id!r} is not in {self.path}") from None
        try:
            return self._file(shard, video_id)["videos"][self._name_of[video_id]]
        except HDF5_DAMAGE as err:  # a damaged group or a shard that lost the video
            raise BadTokens(video_id, self.shard_paths[shard], f"cannot find its tokens ({error_line(err)})") from None

    def _file(self, shard: int, video_id: str) -> h5py.File:
        if os.getpid() != self._pid:  # forked (DataLoader worker): never share HDF5 handles
            self._files = OrderedDict()
            self._pid = os.getpid()
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard]
        path = self.shard_paths[shard]
        try:
            handle = h5py.File(path, "r")
        except HDF5_DAMAGE as err:
            raise BadTokens(video_id, path, f"cannot open its shard ({error_line(err)})") from None
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


def shard_videos(shard: h5py.File) -> dict[str, str]:
    """video id -> dataset name, for every video of an open shard (escaped or not)."""
    names = list(shard["videos"].keys())
    if shard.attrs.get("dataset_names") == ESCAPED_NAMES:
        return {video_id_of(name): name for name in names}
    return {name: name for name in names}


def all_finite(tokens: np.ndarray) -> bool:
    """No NaN or inf in `tokens`; for float16, a bit test over blocks (a few ms per 100 MB)."""
    if tokens.dtype != np.float16:
        return bool(np.isfinite(tokens).all())
    bits = np.ascontiguousarray(tokens).reshape(-1).view(np.uint16)
    if bits.size == 0:
        return True
    block = np.empty(min(bits.size, 1 << 16), np.uint16)
    for start in range(0, bits.size, block.size):
        part = block[: min(block.size, bits.size - start)]
        np.bitwise_and(bits[start : start + part.size], 0x7C00, out=part)  # the exponent bits
        if part.max() == 0x7C00:  # all ones: inf or NaN
            return False
    return True


def count_nonfinite(tokens: np.ndarray) -> int:
    """How many NaN/inf values `tokens` holds (for float16: all exponent bits set, faster than isfinite)."""
    if tokens.dtype == np.float16:
        return int(np.count_nonzero((np.ascontiguousarray(tokens).view(np.uint16) & 0x7C00) == 0x7C00))
    return int(tokens.size - np.count_nonzero(np.isfinite(tokens)))


def error_line(err: Exception) -> str:
    """The first line of an exception's message (h5py's can run over several)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _text(value) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _plain(value):
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
