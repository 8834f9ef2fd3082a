"""The pooled sidecar: each video's pooled sets, checked once, reused by every question and epoch.

Training needs each video's pooled sets, (T + N') x D' numbers (redvillm.pooled_sets). A raw
cache holds T x N x D (for llava-1.5-7b at T = 100: 118 MB instead of 1.4 MB), so they are
pooled once per video and written beside the cache, one file per cache shard. A pooled cache
(``redvillm-extract --store pooled``) already holds them: its sidecar files hold only the check,
and samples are read from the cache itself. Either way the values are the same bits.

    CACHE.pooled/<shard name>.h5
      attrs  source_size, source_mtime_ns (of the cache shard), family, format_version,
             bad = JSON {video_id: why}: videos of the shard whose tokens could not be used
             (unreadable, or not finite: a NaN would poison every weight it reaches)
      temporal/<video_id>  (T, D') float16   (raw caches only) the pooled sets,
      spatial/<video_id>   (N', D') float16   as redvillm.pooled_sets computes them

Only finite values are ever written. Each file is written under a temporary name and renamed,
and rebuilt if its cache shard changed or it was made by an older format version (v3: pooled
frame by frame, in redvillm.pooled_sets' fixed order). Ablations over pooling / temporal
module share it. Memory: nothing is kept in RAM but the open file handles; the page cache
keeps hot videos.
Shape letters: T frames, N patches, D vision width; N', D' after the family's regrouping.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import torch

from redvillm.cache import HDF5_DAMAGE, RAW, BadTokens, TokenCache, all_finite, shards_dir
from redvillm.errors import UserError
from redvillm.pooled_sets import pooled_sets
from redvillm.train.checkpoint import disk_full

FORMAT_VERSION = 3  # 2: tokens checked finite, bad videos listed; 3: redvillm.pooled_sets (older files are rebuilt)


class PooledStore:
    def __init__(self, cache: TokenCache, pool: Callable, family: str, directory: str | None = None):
        self.cache, self.pool, self.family = cache, pool, family
        self.copies = cache.store == RAW  # a pooled cache is read directly; its sidecar records the check only
        default = shards_dir(cache.path).with_suffix(".pooled")
        self.dir = Path(directory) if directory else default
        self._files: OrderedDict[Path, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    def pooled_path(self, shard: Path) -> Path:
        return self.dir / shard.name

    def build(self, video_ids: set[str], rank: int = 0, world: int = 1,
              progress: Callable[[int, int], None] | None = None) -> None:
        """Pool every cache shard holding one of `video_ids` that has no fresh pooled file yet."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{self.dir}: cannot create the pooled sidecar ({err.strerror}); "
                            "pass --pooled-dir to put it somewhere writable") from None
        shards = sorted({self.cache.shard_path(v) for v in video_ids})
        _check_shards_exist(shards, self.cache)
        # Split all shards, not the stale ones: ranks look at freshness at different moments.
        mine = shards[rank::world]
        stale = [shard for shard in mine if not self._fresh(shard)]
        members = self._videos_by_shard(set(stale))
        for done, shard in enumerate(mine, 1):
            if shard in members:
                self._pool_shard(shard, members[shard])
            if progress:
                progress(done, len(mine))

    def bad_videos(self, video_ids: set[str]) -> dict[str, BadTokens]:
        """Those of `video_ids` whose tokens were found unusable when their shard was pooled."""
        bad = {}
        for shard in sorted({self.cache.shard_path(v) for v in video_ids}):
            with h5py.File(self.pooled_path(shard), "r") as f:
                for video_id, why in json.loads(f.attrs["bad"]).items():
                    if video_id in video_ids:
                        bad[video_id] = BadTokens(video_id, shard, why)
        return bad

    def _videos_by_shard(self, shards: set[Path]) -> dict[Path, list[str]]:
        members: dict[Path, list[str]] = {shard: [] for shard in shards}
        if shards:
            for video_id in self.cache:
                shard = self.cache.shard_path(video_id)
                if shard in members:
                    members[shard].append(video_id)
        return members

    def _fresh(self, shard: Path) -> bool:
        path = self.pooled_path(shard)
        if not path.is_file():
            return False
        stat = shard.stat()
        try:
            with h5py.File(path, "r") as f:
                return (int(f.attrs["source_size"]), int(f.attrs["source_mtime_ns"]), f.attrs["family"],
                        int(f.attrs["format_version"])) == (stat.st_size, stat.st_mtime_ns, self.family, FORMAT_VERSION)
        except HDF5_DAMAGE:
            return False

    def _pool_shard(self, shard: Path, video_ids: list[str]) -> None:
        info = self.cache.info
        per_video = (info["num_frames"] + info["num_patches"]) * info["hidden_size"] * 2 if self.copies else 0
        needed = len(video_ids) * per_video + 4096  # float16 pooled sets (D' x N' <= D x N for every family)
        tmp = self.dir / f".tmp-{os.getpid()}-{shard.name}"
        with disk_full(self.pooled_path(shard), needed, cleanup=tmp,
                       fix="free space or pass --pooled-dir to put the sidecar elsewhere, then rerun"):
            self._write_pooled(shard, video_ids, tmp)
        os.replace(tmp, self.pooled_path(shard))

    def _write_pooled(self, shard: Path, video_ids: list[str], tmp: Path) -> None:
        stat = shard.stat()
        bad = {}
        with h5py.File(tmp, "w") as out:
            out.attrs.update(source_size=stat.st_size, source_mtime_ns=stat.st_mtime_ns, family=self.family,
                             format_version=FORMAT_VERSION)
            temporal_group, spatial_group = out.create_group("temporal"), out.create_group("spatial")
            for video_id in video_ids:
                try:
                    temporal, spatial = self._pool_video(video_id, shard)
                except BadTokens as err:
                    bad[video_id] = err.why
                    continue
                if self.copies:
                    name = self.cache.stored_name(video_id)  # as in the shard: ids HDF5 cannot hold are escaped
                    temporal_group.create_dataset(name, data=temporal)
                    spatial_group.create_dataset(name, data=spatial)
            out.attrs["bad"] = json.dumps(bad, sort_keys=True)

    def _pool_video(self, video_id: str, shard: Path) -> tuple[np.ndarray, np.ndarray]:
        """(temporal (T, D'), spatial (N', D')) float16, finite; BadTokens otherwise (the reader
        checks the tokens, raw or pooled, are readable and finite)."""
        temporal, spatial = self.cache.pooled(video_id, partial(pooled_sets, self.pool))
        if not (all_finite(temporal) and all_finite(spatial)):
            raise BadTokens(video_id, shard, "its pooled tokens overflow float16")
        return temporal, spatial

    def get(self, video_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(temporal (T, D'), spatial (N', D')) float32 for one video (checked by ``nonfinite``)."""
        name = self.cache.stored_name(video_id)  # pooled files use their cache shard's dataset names
        if self.copies:
            f = self._file(self.pooled_path(self.cache.shard_path(video_id)))
            temporal, spatial = f["temporal"][name][()], f["spatial"][name][()]
        else:
            temporal, spatial = self.cache.pooled(video_id, None, check=False)
        return torch.from_numpy(temporal).float(), torch.from_numpy(spatial).float()

    def nonfinite(self, video_id: str, temporal: torch.Tensor, spatial: torch.Tensor) -> str | None:
        """Why these pooled tokens (from `get`) must not be trained on, or None."""
        if bool(torch.isfinite(temporal).all()) and bool(torch.isfinite(spatial).all()):
            return None
        if not self.copies:  # a pooled cache changed after its check (extraction refuses non-finite tokens)
            return (f"{self.cache.shard_path(video_id)}: pooled tokens of video {video_id!r} are not finite (the "
                    "shard was changed after it was checked); rerun its redvillm-extract command with --verify")
        return (f"{self.pooled_path(self.cache.shard_path(video_id))}: pooled tokens of video {video_id!r} are not "
                "finite (the file was changed after it was built); delete it and rerun to rebuild it from the cache")

    def _file(self, path: Path) -> h5py.File:
        if os.getpid() != self._pid:  # a DataLoader worker: open its own handles
            self._files, self._pid = OrderedDict(), os.getpid()
        if path not in self._files:
            self._files[path] = h5py.File(path, "r")
            if len(self._files) > 16:
                self._files.popitem(last=False)[1].close()
        return self._files[path]



def _check_shards_exist(shards: list[Path], cache: TokenCache) -> None:
    missing = [shard for shard in shards if not shard.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"{missing[0]}{more}: cache shard is missing (listed in {cache.path}); rerun the same "
                        "redvillm-extract command to re-extract its videos")
