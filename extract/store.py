"""Writing the cache laid out in ``redvillm.cache`` (either store): shards, failures, the index, resume state."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from redvillm.cache import (CHECKSUM, ESCAPED_NAMES, HDF5_DAMAGE, FORMAT, FORMAT_VERSION, POOLED, POOLED_SETS, SHARD_GLOB,
                            CacheInfo, all_finite, cache_mismatch, count_nonfinite, error_line, shard_videos,
                            shards_dir)
from redvillm.cache_names import dataset_name
from redvillm.errors import UserError
from redvillm.extract.repair import set_aside_damaged
from redvillm.journal import append_journal, read_journal

if TYPE_CHECKING:
    from redvillm.pooled_sets import PooledVideo

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SHARD_NAME = re.compile(r"^r(\d{3})-(\d{5})\.h5$")


@dataclass(frozen=True)
class Failure:
    video_id: str
    path: str
    reason: str
    size: int | None
    mtime_ns: int | None

    @classmethod
    def of(cls, video_id: str, path: Path, reason: str) -> Failure:
        size, mtime = _fingerprint(path)
        return cls(video_id, str(path), reason, size, mtime)

    def unchanged(self) -> bool:
        """The file is as it was when it failed (so failing again is a waste of time)."""
        return (self.size, self.mtime_ns) == _fingerprint(Path(self.path))


def _fingerprint(path: Path) -> tuple[int | None, int | None]:
    try:
        stat = path.stat()
    except OSError:
        return None, None
    return stat.st_size, stat.st_mtime_ns


class CacheStore:
    """OUT.h5 and OUT.shards/: what is already done, and the refusal of a mismatched cache."""

    def __init__(self, index_path: Path, info: CacheInfo, overwrite: bool = False):
        self.index_path = index_path
        self.dir = shards_dir(index_path)
        self.info = info
        if overwrite:
            self._remove_existing()
        self._check_writable()

    def _remove_existing(self) -> None:
        if self.index_path.exists():
            self.index_path.unlink()
        if self.dir.exists():
            shutil.rmtree(self.dir)

    def _check_writable(self) -> None:
        parent = self.index_path.parent
        if not parent.is_dir():
            raise UserError(f"{self.index_path}: folder {parent} does not exist; create it first")
        try:
            self.dir.mkdir(exist_ok=True)
            probe = self.dir / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise UserError(f"{self.index_path}: cannot write there ({err.strerror}); pick a writable OUT") from None

    def complete_shards(self) -> list[Path]:
        return sorted(p for p in self.dir.glob(SHARD_GLOB) if _SHARD_NAME.match(p.name))

    def check_compatible(self) -> list[str]:
        """Refuse to add tokens from another model/T/... to an existing cache.

        A damaged index of ours is no reason to refuse: it is rebuilt from the shards at the end
        of the run (the returned note says so). Damaged shards are set aside before this.
        """
        notes = []
        sources = [self.index_path] if self.index_path.exists() else []
        for path in sources + self.complete_shards()[:1]:
            try:
                with h5py.File(path, "r") as f:
                    theirs = CacheInfo.from_json(f.attrs["info"])
            except HDF5_DAMAGE as err:
                if path == self.index_path and self._ours(path):
                    notes.append(f"{path}: unreadable index ({error_line(err)}); rebuilt from the shards at the end")
                    continue
                raise UserError(f"{path}: exists but is not a readable redvillm cache; "
                                "move it away or pass --overwrite") from None
            why = cache_mismatch(theirs, self.info, append=True, cached_as="there", wanted_as="here")
            if why:
                raise UserError(f"{path}: {self._refusal(theirs, why)}")
        return notes

    def _refusal(self, theirs: CacheInfo, why: str) -> str:
        """What is wrong with adding to a cache of `theirs`, and the fix; one store per cache (redvillm.cache)."""
        if theirs.store == self.info.store:
            return f"made for another configuration ({why}); use another OUT or pass --overwrite to replace it"
        only_store = cache_mismatch(replace(theirs, store=self.info.store), self.info, append=True) is None
        fix = f"pass --store {theirs.store} to add to it, use another OUT," if only_store else "use another OUT"
        return f"holds {theirs.store} tokens, this run writes {self.info.store} ones ({why}); {fix} or --overwrite to replace it"

    def _ours(self, index: Path) -> bool:
        """An unreadable OUT that extract wrote (a torn HDF5 file, or beside our shards), not a stranger's file."""
        with open(index, "rb") as f:
            head = f.read(8)
        return head in (b"", HDF5_SIGNATURE) or bool(self.complete_shards())

    def set_aside_damaged(self, verify: bool = False) -> list[str]:
        """Rename damaged shards ``*.h5.damaged`` so their videos are extracted again (see repair.py)."""
        return set_aside_damaged(self.complete_shards(), verify)

    def done_ids(self) -> set[str]:
        done: set[str] = set()
        for path in self.complete_shards():
            try:
                with h5py.File(path, "r") as f:
                    done.update(shard_videos(f))
            except HDF5_DAMAGE:  # damaged since rank 0 looked: extracted again
                continue
        return done

    def failures(self) -> dict[str, Failure]:
        """The latest failure recorded for each video id, across ranks (a line torn by a kill
        mid-write is skipped: redvillm.journal)."""
        latest: dict[str, Failure] = {}
        for path in sorted(self.dir.glob("failures-r*.jsonl")):
            for record in read_journal(path):
                latest[record["video_id"]] = Failure(**{k: record.get(k) for k in Failure.__dataclass_fields__})
        return latest

    def record_failure(self, rank: int, failure: Failure) -> None:
        append_journal(self.dir / f"failures-r{rank:03d}.jsonl", [failure.__dict__])

    def shard_writer(self, rank: int, max_bytes: int) -> ShardWriter:
        for stale in self.dir.glob(f".tmp-r{rank:03d}-*.h5"):
            stale.unlink()  # a shard this rank was writing when it was killed
        taken = [int(m.group(2)) for p in self.complete_shards()
                 if (m := _SHARD_NAME.match(p.name)) and int(m.group(1)) == rank]
        return ShardWriter(self.dir, rank, self.info, max_bytes, next_seq=max(taken, default=-1) + 1)

    def write_index(self, extract_config: dict) -> int:
        """Rebuild OUT.h5 from the complete shards (atomically); returns the video count."""
        shard_names, ids, names, shard_of, checked = [], [], [], [], []
        seen: set[str] = set()
        for position, path in enumerate(self.complete_shards()):
            shard_names.append(path.name)
            with h5py.File(path, "r") as f:
                checked.append(f.attrs.get("checksum") == CHECKSUM)
                for video_id, name in shard_videos(f).items():
                    if video_id not in seen:  # only two concurrent runs on one OUT could duplicate
                        seen.add(video_id)
                        ids.append(video_id)
                        names.append(name)
                        shard_of.append(position)
        order = np.argsort(np.array(ids, dtype=object), kind="stable") if ids else np.array([], int)
        keys = [dataset_name(video_id) for video_id in ids]
        tmp = self.index_path.with_name(f".{self.index_path.name}.tmp-{os.getpid()}")
        string = h5py.string_dtype()
        try:
            with h5py.File(tmp, "w") as f:
                _write_header(f, self.info)
                f.attrs["checksum"] = CHECKSUM if all(checked) else "partial"  # a resumed first-release cache
                f.attrs["extract_config"] = json.dumps(extract_config, sort_keys=True, ensure_ascii=False)
                f.create_dataset("shards", data=np.array(shard_names, dtype=object), dtype=string)
                f.create_dataset("video_ids", data=np.array(keys, dtype=object)[order], dtype=string)
                f.create_dataset("video_names", data=np.array(names, dtype=object)[order], dtype=string)
                f.create_dataset("video_shard", data=np.array(shard_of, dtype=np.int32)[order])
            os.replace(tmp, self.index_path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk, a kill: the previous index stays in place
            raise
        return len(ids)


def _write_header(f: h5py.File, info: CacheInfo) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["info"] = info.to_json()
    f.attrs["checksum"] = CHECKSUM
    f.attrs["dataset_names"] = ESCAPED_NAMES


class NonFiniteTokens(ValueError):
    """Tokens refused by ``ShardWriter.add``; the message says how many values are NaN/inf."""


def nonfinite_reason(tokens: np.ndarray) -> str | None:
    """Why float16 tokens cannot be stored (NaN, or inf from an overflow past 65504), or None."""
    if all_finite(tokens):
        return None
    return nonfinite_message(count_nonfinite(tokens), tokens.size)


def nonfinite_message(bad: int, values: int) -> str:
    """The refusal of a video whose frame tokens hold `bad` NaN/inf values out of `values` (either store)."""
    return (f"{bad} of {values} token values are not finite in float16 "
            "(NaN, or beyond float16's range of 65504); not stored")


def _storable(value):
    """Attribute values as HDF5 holds them: a str that is not UTF-8 (a file name) as raw bytes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return np.bytes_(value.encode("utf-8", "surrogateescape"))
    return value


class ShardWriter:
    """Appends videos to the current shard; a shard becomes visible only once it is closed."""

    def __init__(self, directory: Path, rank: int, info: CacheInfo, max_bytes: int, next_seq: int):
        self.dir, self.rank, self.info, self.max_bytes = directory, rank, info, max_bytes
        self.seq = next_seq
        self._file: h5py.File | None = None
        self._bytes = 0

    def add(self, video_id: str, tokens: np.ndarray, attrs: dict) -> Path | None:
        """Store (T, N, D) tokens in a raw cache; returns the shard path if this completed a shard.

        One chunk per frame keeps a whole-video read one pass over the file, and fletcher32 makes
        a corrupted block fail its read instead of coming back as numbers.
        """
        tokens = tokens.astype(np.float16, copy=False)
        why = nonfinite_reason(tokens)  # after the cast: an overflow past 65504 is an inf too
        if why is not None:
            raise NonFiniteTokens(why)
        dataset = self._videos().create_dataset(dataset_name(video_id), data=tokens, chunks=(1, *tokens.shape[1:]),
                                                fletcher32=True)
        return self._added(dataset, attrs, dataset.nbytes)

    def add_pooled(self, video_id: str, pooled: PooledVideo, attrs: dict) -> Path | None:
        """Store one video's pooled sets in a pooled cache (a group of two datasets, one chunk each);
        refused like ``add`` when its frame tokens held NaN/inf."""
        if pooled.nonfinite:
            raise NonFiniteTokens(nonfinite_message(pooled.nonfinite, pooled.values))
        sets = [getattr(pooled, name).astype(np.float16, copy=False) for name in POOLED_SETS]
        if not all(all_finite(values) for values in sets):  # unreachable from finite frames; never store one
            raise NonFiniteTokens("its pooled tokens are not finite in float16; not stored")
        group = self._videos().create_group(dataset_name(video_id))
        for name, values in zip(POOLED_SETS, sets):
            group.create_dataset(name, data=values, chunks=values.shape, fletcher32=True)
        return self._added(group, attrs, sum(values.nbytes for values in sets))

    def _videos(self) -> h5py.Group:
        """The open shard's `videos` group (a new shard is started when none is open)."""
        if self._file is None:
            # Pooled shards use HDF5 1.10's format: a one-chunk dataset then needs no chunk B-tree, ~1 KB
            # of overhead per video instead of ~8 (raw shards keep the first release's format).
            newer = {"libver": ("v110", "latest")} if self.info.store == POOLED else {}
            self._file = h5py.File(self._tmp_path(), "w", **newer)
            _write_header(self._file, self.info)
            self._file.create_group("videos")
        return self._file["videos"]

    def _added(self, node: h5py.Dataset | h5py.Group, attrs: dict, nbytes: int) -> Path | None:
        for key, value in attrs.items():
            node.attrs[key] = _storable(value)
        self._bytes += nbytes
        return self.close_shard() if self._bytes >= self.max_bytes else None

    def close_shard(self) -> Path | None:
        if self._file is None:
            return None
        self._file.flush()
        self._file.close()
        tmp = self._tmp_path()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        final = self.dir / f"r{self.rank:03d}-{self.seq:05d}.h5"
        os.replace(tmp, final)
        self._file, self._bytes = None, 0
        self.seq += 1
        return final

    def abandon(self) -> None:
        """Drop the shard being written after a failed write (a full disk): its space first, then the file.

        Truncating first leaves HDF5 room to write its closing metadata, instead of failing again
        and crashing the process at exit; the file is then removed.
        """
        if self._file is None:
            return
        tmp = self._tmp_path()
        try:
            os.truncate(tmp, 0)
        except OSError:
            pass
        try:
            self._file.close()
        except (OSError, RuntimeError):
            pass  # the file is removed below whatever HDF5 managed to write
        self._file, self._bytes = None, 0
        tmp.unlink(missing_ok=True)

    def _tmp_path(self) -> Path:
        return self.dir / f".tmp-r{self.rank:03d}-{self.seq:05d}.h5"
