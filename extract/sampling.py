"""Which frames of a video become the T frames of the cache.

Both rules are fps-agnostic: they see only the number of decoded frames.

- ``uniform`` (default): the middle frame of each of T equal segments of [0, total).
- ``videochatgpt``: Video-ChatGPT's reference rule (midpoint of T segments of [0, total - 1],
  with its rounding), so caches can be compared with theirs frame for frame.

A video with fewer than T frames gets min(total, T) indices from the rule, then the short-video
policy decides the rest:

- ``repeat`` (default): nearest-frame repetition up to T rows, so every cached row is a real
  frame and T is the same for every video. The repeated indices are recorded in the cache.
- ``keep``: only the video's own frames (fewer than T rows); stage two pools over what is there.

Video-ChatGPT zero-pads such videos to 100 rows; zeros are not frames, so neither policy does.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

SamplingRule = Literal["uniform", "videochatgpt"]
ShortVideoPolicy = Literal["repeat", "keep"]


def sample_indices(
    total: int,
    num_frames: int,
    rule: SamplingRule = "uniform",
    short_videos: ShortVideoPolicy = "repeat",
) -> np.ndarray:
    """Frame indices (int64) to decode from a video of `total` frames."""
    if total < 1:
        raise ValueError("the video has no frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    count = min(total, num_frames)
    if rule == "uniform":
        base = _uniform(total, count)
    elif rule == "videochatgpt":
        base = _videochatgpt(total, count)
    else:
        raise ValueError(f"unknown sampling rule {rule!r}: uniform or videochatgpt")
    if count == num_frames:
        return base
    if short_videos == "keep":
        return np.unique(base)
    if short_videos == "repeat":
        return base[_uniform(count, num_frames)]
    raise ValueError(f"unknown short-video policy {short_videos!r}: repeat or keep")


def _uniform(total: int, count: int) -> np.ndarray:
    # Integer arithmetic: floor((i + 0.5) * total / count) without float rounding surprises.
    i = np.arange(count, dtype=np.int64)
    return (2 * i + 1) * total // (2 * count)


def _videochatgpt(total: int, count: int) -> np.ndarray:
    segment = float(total - 1) / count
    starts = np.round(segment * np.arange(count)).astype(np.int64)
    ends = np.round(segment * np.arange(1, count + 1)).astype(np.int64)
    return (starts + ends) // 2
