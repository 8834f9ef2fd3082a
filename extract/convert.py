"""A raw cache as VIDEOS: ``redvillm-extract RAW.h5 OUT.h5 --store pooled`` pools its tokens, no encoder.

Each video's stored (T, N, D) tokens go through the same ``RunningPool`` as frames coming from
the encoder (redvillm.pooled_sets), so OUT is bit for bit what ``--store pooled`` extraction of
the same videos writes. OUT records the raw cache's provenance (model, vision settings, T,
sampling rule) with store "pooled"; the options about them (--model, --num-frames, ...) do not
apply. Resume, failures, sharding (torchrun, --num-shards) and the refusal of a mismatched OUT
are extraction's own (extract/pipeline.py). A video whose raw tokens are unreadable or not
finite is recorded as failed with the reader's reason; a rerun retries it once its shard
changed (e.g. repaired by ``redvillm-extract VIDEOS RAW.h5 --verify``). One video's (T, N, D)
tokens are held at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redvillm.cache import POOLED, RAW, BadTokens, CacheInfo, open_cache
from redvillm.errors import UserError
from redvillm.extract.config import ExtractConfig
from redvillm.extract.pipeline import Outcome
from redvillm.extract.space import StoredSize
from redvillm.extract.videos import Video
from redvillm.families.registry import family_for_cache
from redvillm.pooled_sets import RunningPool, pooled_shape


def is_cache(videos: str) -> bool:
    """Whether VIDEOS names a cache index (an .h5 file) rather than videos or a list of them."""
    path = Path(videos)
    return path.suffix.lower() == ".h5" and path.is_file()


class CachedSource:
    """The videos of a raw cache, each pooled from its stored tokens."""

    def __init__(self, cfg: ExtractConfig):
        self.cache = open_cache(cfg.videos)  # UserError if it is no redvillm cache
        if self.cache.store != RAW:
            raise UserError(f"{cfg.videos}: a {self.cache.store} cache already; VIDEOS as a cache takes a raw one "
                            "(extracted with --store raw), to pool into OUT")
        if cfg.store != POOLED:
            raise UserError(f"{cfg.videos}: VIDEOS is a raw cache; pass --store pooled to pool its tokens into "
                            f"{cfg.output} (copying a raw cache needs no redvillm: copy OUT.h5 and OUT.shards/)")
        if Path(cfg.output).resolve() == Path(cfg.videos).resolve():
            raise UserError(f"{cfg.output}: OUT is VIDEOS itself; pool into another OUT")
        self.videos = [Video(v, self.cache.shard_path(v)) for v in sorted(self.cache)]

    def prepare(self, dist_info, mine: list[Video]) -> None:
        """The family that pools (from the cache's own provenance); sets `info` and `size`."""
        self.info = dataclasses.replace(CacheInfo.from_dict(self.cache.info), store=POOLED)
        self.family = family_for_cache(self.info.model, self.info.revision, self.cache.info)
        units, width = pooled_shape(self.family.pool, self.info.num_patches, self.info.hidden_size)
        self.size = StoredSize(POOLED, self.info.num_frames, units, width)

    @contextmanager
    def outcomes(self, todo: list[Video], retry: set[str]) -> Iterator[Iterator[Outcome]]:
        yield (self._outcome(video) for video in todo)

    def close(self) -> None:
        self.cache.close()

    def _outcome(self, video: Video) -> Outcome:
        try:
            tokens = self.cache[video.video_id]  # (T, N, D) float16, checked finite
            attrs = self.cache.meta(video.video_id)
        except BadTokens as err:
            return Outcome(video.video_id, video.path, error=f"unusable tokens in the raw cache: {err.why}")
        running = RunningPool(self.family.pool)
        running.add(tokens)
        return Outcome(video.video_id, video.path, pooled=running.result(), attrs=attrs, frames=len(tokens))
