"""A video's two pooled sets, computed one frame at a time: the one pooling every stage uses.

Stage two only ever sees a video as its temporal tokens (T, D') and its spatial tokens (N', D'),
both defined by the family's ``pool`` (N', D': the token units the projector takes, e.g. 2x2
merge groups of 4D channels for Qwen2-VL and InternVL). Every family's pool is linear in the
frames: means, reshapes, a pixel shuffle, a fixed average pooling. A frame's temporal token
depends on that frame alone, and the spatial tokens are the mean over time of each frame's token
units. So the sets can be built from running sums, frame by frame, without ever holding the
(T, N, D) tokens: memory O((T + N') D').

The order is fixed, so that every path gives the same bits (a pooled cache, a raw cache's
pooled sidecar, predict, the answerer):

1. each frame's tokens are rounded to float16 first, as a raw cache stores them;
2. frame t alone goes through the family's pool as a one-frame video: its temporal output is
   the frame's temporal token, its spatial output the frame's token units (a mean over one
   frame is the frame itself, exactly);
3. the spatial tokens are the float32 sum of the frames' token units, in frame order, divided
   by the number of frames;
4. both sets are rounded to float16, the dtype a pooled cache and the sidecar store.

Whether the frames come in one (T, N, D) array or in the encoder's batches does not change a
bit. Shape letters: T frames, N patches, D vision width; N', D' after the family's regrouping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from redvillm.cache import all_finite, count_nonfinite

Pool = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # a family's pool: (T, N, D) -> (T, D'), (N', D')


@dataclass(frozen=True)
class PooledVideo:
    """One video's pooled sets (float16) and how many of its frame token values were not finite."""

    temporal: np.ndarray  # (T, D')
    spatial: np.ndarray  # (N', D')
    nonfinite: int  # NaN/inf among the frame tokens (after the float16 rounding); the sets are garbage if > 0
    values: int  # frame token values seen: T * N * D


class RunningPool:
    """Pooled sets from frames given in order, in batches of any size (see the module docstring)."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self._temporal: list[np.ndarray] = []  # one (D',) float16 row per frame
        self._spatial_sum: np.ndarray | None = None  # (N', D') float32
        self.nonfinite = self.values = 0

    def add(self, tokens: np.ndarray) -> None:
        """The next frames' tokens, (b, N, D), any float dtype (rounded to float16 here)."""
        tokens = np.asarray(tokens).astype(np.float16, copy=False)
        if not all_finite(tokens):  # checked in blocks; counting allocates a batch-sized mask
            self.nonfinite += count_nonfinite(tokens)
        self.values += tokens.size
        for frame in tokens:
            temporal, units = self.pool(torch.from_numpy(np.ascontiguousarray(frame[None])))  # (1, D'), (N', D')
            self._temporal.append(temporal[0].numpy().astype(np.float16))
            units = units.numpy()
            if self._spatial_sum is None:
                self._spatial_sum = units.astype(np.float32, copy=True)
            else:
                self._spatial_sum += units

    @property
    def frames(self) -> int:
        return len(self._temporal)

    def result(self) -> PooledVideo:
        if self._spatial_sum is None:
            raise ValueError("no frames were added")
        spatial = (self._spatial_sum / np.float32(self.frames)).astype(np.float16)
        return PooledVideo(np.stack(self._temporal), spatial, self.nonfinite, self.values)


def pooled_sets(pool: Pool, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, N, D) tokens -> (temporal (T, D'), spatial (N', D')) float16, as RunningPool gives them."""
    running = RunningPool(pool)
    running.add(tokens)
    pooled = running.result()
    return pooled.temporal, pooled.spatial


def pooled_shape(pool: Pool, patches: int, width: int) -> tuple[int, int]:
    """(N', D') of the spatial tokens for frames of N x D tokens."""
    _, spatial = pooled_sets(pool, np.zeros((1, patches, width), np.float16))
    return spatial.shape


def cached_tokens(cache, pool: Pool, video_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(temporal (T, D'), spatial (N', D')) float32 of one video of a cache of either store
    (redvillm.cache): a pooled cache's stored sets, or a raw cache's tokens pooled here.
    ``BadTokens`` if they are unreadable or not finite."""
    temporal, spatial = cache.pooled(video_id, partial(pooled_sets, pool))
    return torch.from_numpy(temporal).float(), torch.from_numpy(spatial).float()
