"""The pooled sidecar: each video's tokens pooled once, reused by every question and epoch.

Training needs (T + N) x D numbers per sample but the cache holds T x N x D (for llava-1.5-7b at
T = 100: 1.4 MB instead of 118 MB). Pooling is linear and cheap, so it is done once per video
and written beside the cache, one file per cache shard:

    CACHE.pooled/<shard name>.h5
      attrs  source_size, source_mtime_ns (of the cache shard), family, format_version
      temporal/<video_id>  (T, D) float16   mean over patches (the family's spatial pooling)
      spatial/<video_id>   (N, D) float16   mean over frames (temporal pooling)

Each file is written under a temporary name and renamed, and rebuilt if its cache shard
changed. Ablations over pooling / temporal module share it. Memory: nothing is kept in RAM
but the open file handles; the page cache keeps hot videos.
Shape letters: T frames, N patches, D vision width.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from redvillm.cache import TokenCache, shards_dir
from redvillm.errors import UserError

FORMAT_VERSION = 1


class PooledStore:
    def __init__(self, cache: TokenCache, pool: Callable, family: str, directory: str | None = None):
        self.cache, self.pool, self.family = cache, pool, family
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
        # Split all shards, not the stale ones: ranks look at freshness at different moments.
        mine = shards[rank::world]
        for done, shard in enumerate(mine, 1):
            if not self._fresh(shard):
                self._pool_shard(shard)
            if progress:
                progress(done, len(mine))

    def _fresh(self, shard: Path) -> bool:
        path = self.pooled_path(shard)
        if not path.is_file():
            return False
        stat = shard.stat()
        try:
            with h5py.File(path, "r") as f:
                return (int(f.attrs["source_size"]), int(f.attrs["source_mtime_ns"]), f.attrs["family"],
                        int(f.attrs["format_version"])) == (stat.st_size, stat.st_mtime_ns, self.family, FORMAT_VERSION)
        except (OSError, KeyError):
            return False

    def _pool_shard(self, shard: Path) -> None:
        stat = shard.stat()
        tmp = self.dir / f".tmp-{os.getpid()}-{shard.name}"
        with h5py.File(shard, "r") as source, h5py.File(tmp, "w") as out:
            out.attrs.update(source_size=stat.st_size, source_mtime_ns=stat.st_mtime_ns, family=self.family,
                             format_version=FORMAT_VERSION)
            temporal_group, spatial_group = out.create_group("temporal"), out.create_group("spatial")
            for video_id, dataset in source["videos"].items():
                temporal, spatial = self.pool(torch.from_numpy(dataset[()]))  # (T, D), (N, D)
                temporal_group.create_dataset(video_id, data=temporal.numpy().astype(np.float16))
                spatial_group.create_dataset(video_id, data=spatial.numpy().astype(np.float16))
        os.replace(tmp, self.pooled_path(shard))

    def get(self, video_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(temporal (T, D), spatial (N, D)) float32 for one video."""
        f = self._file(self.pooled_path(self.cache.shard_path(video_id)))
        name = self.cache.stored_name(video_id)  # pooled files use their cache shard's dataset names
        temporal = torch.from_numpy(f["temporal"][name][()]).float()
        spatial = torch.from_numpy(f["spatial"][name][()]).float()
        return temporal, spatial

    def _file(self, path: Path) -> h5py.File:
        if os.getpid() != self._pid:  # a DataLoader worker: open its own handles
            self._files, self._pid = OrderedDict(), os.getpid()
        if path not in self._files:
            self._files[path] = h5py.File(path, "r")
            if len(self._files) > 16:
                self._files.popitem(last=False)[1].close()
        return self._files[path]
