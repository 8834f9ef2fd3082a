"""Writing the cache laid out in ``redvillm.cache``: shards, failures, the index, resume state."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from redvillm.cache import FORMAT, FORMAT_VERSION, SHARD_GLOB, CacheInfo, cache_mismatch, shards_dir
from redvillm.errors import UserError
from redvillm.journal import append_journal, read_journal

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

    def check_compatible(self) -> None:
        """Refuse to add tokens from another model/T/... to an existing cache."""
        sources = [self.index_path] if self.index_path.exists() else []
        for path in sources + self.complete_shards()[:1]:
            try:
                with h5py.File(path, "r") as f:
                    theirs = CacheInfo.from_json(f.attrs["info"])
            except (OSError, KeyError, TypeError, ValueError):
                raise UserError(f"{path}: exists but is not a readable redvillm cache; "
                                "move it away or pass --overwrite") from None
            why = cache_mismatch(theirs, self.info, append=True, cached_as="there", wanted_as="here")
            if why:
                raise UserError(f"{path}: made for another configuration ({why}); "
                                "use another OUT or pass --overwrite to replace it")

    def done_ids(self) -> set[str]:
        done: set[str] = set()
        for path in self.complete_shards():
            with h5py.File(path, "r") as f:
                done.update(f["videos"].keys())
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
        shard_names, ids, shard_of = [], [], []
        seen: set[str] = set()
        for position, path in enumerate(self.complete_shards()):
            shard_names.append(path.name)
            with h5py.File(path, "r") as f:
                for video_id in f["videos"].keys():
                    if video_id not in seen:  # only two concurrent runs on one OUT could duplicate
                        seen.add(video_id)
                        ids.append(video_id)
                        shard_of.append(position)
        order = np.argsort(np.array(ids, dtype=object), kind="stable") if ids else np.array([], int)
        tmp = self.index_path.with_name(f".{self.index_path.name}.tmp-{os.getpid()}")
        string = h5py.string_dtype()
        with h5py.File(tmp, "w") as f:
            _write_header(f, self.info)
            f.attrs["extract_config"] = json.dumps(extract_config, sort_keys=True, ensure_ascii=False)
            f.create_dataset("shards", data=np.array(shard_names, dtype=object), dtype=string)
            f.create_dataset("video_ids", data=np.array(ids, dtype=object)[order], dtype=string)
            f.create_dataset("video_shard", data=np.array(shard_of, dtype=np.int32)[order])
        os.replace(tmp, self.index_path)
        return len(ids)


def _write_header(f: h5py.File, info: CacheInfo) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["info"] = info.to_json()


class ShardWriter:
    """Appends videos to the current shard; a shard becomes visible only once it is closed."""

    def __init__(self, directory: Path, rank: int, info: CacheInfo, max_bytes: int, next_seq: int):
        self.dir, self.rank, self.info, self.max_bytes = directory, rank, info, max_bytes
        self.seq = next_seq
        self._file: h5py.File | None = None
        self._bytes = 0
        self.finished: list[Path] = []

    def add(self, video_id: str, tokens: np.ndarray, attrs: dict) -> Path | None:
        """Store (T, N, D) tokens; returns the shard path if this completed a shard."""
        if self._file is None:
            self._file = h5py.File(self._tmp_path(), "w")
            _write_header(self._file, self.info)
            self._file.create_group("videos")
        dataset = self._file["videos"].create_dataset(video_id, data=tokens.astype(np.float16, copy=False))
        for key, value in attrs.items():
            dataset.attrs[key] = value
        self._bytes += dataset.nbytes
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
        self.finished.append(final)
        return final

    def _tmp_path(self) -> Path:
        return self.dir / f".tmp-r{self.rank:03d}-{self.seq:05d}.h5"
