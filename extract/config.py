"""ExtractConfig: every knob of stage one, typed, defaulted and checked in one place."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Literal

from redvillm.extract.sampling import SamplingRule, ShortVideoPolicy

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"


@dataclass
class ExtractConfig:
    videos: str  # folder of videos (recursive) or a .txt/.json list of paths
    output: str  # OUT.h5; shards go to OUT.shards/ beside it
    model: str = DEFAULT_MODEL  # hub id or local checkpoint directory
    revision: str | None = None  # hub revision (branch, tag or commit)
    num_frames: int = 100  # T, sampled uniformly whatever the fps
    image_size: int | None = None  # square frame size for any-resolution towers (None: the family's default)
    sampling: SamplingRule = "uniform"  # or "videochatgpt", Video-ChatGPT's index rule
    short_videos: ShortVideoPolicy = "repeat"  # videos with fewer than T frames: repeat or keep
    batch_size: int = 32  # frames per vision-encoder forward
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # encoder compute dtype
    decode_workers: int = 2  # decoder processes running ahead of the encoder
    threads: int | None = None  # torch threads of the encoder on CPU (default: cores left by the decoders)
    decode_timeout: float = 120.0  # seconds one video may take to decode before it is skipped
    recycle_after: int = 100  # replace a decoder process after this many videos (decord leaks)
    shard_size: str = "2GB"  # a shard is closed once it holds this much (KB/MB/GB)
    overwrite: bool = False  # replace an existing OUT made with other settings
    strict: bool = False  # exit non-zero if any video failed
    retry_failed: bool = False  # retry videos that failed before even if the file is unchanged
    num_shards: int | None = None  # manual scale-out without torchrun (e.g. array jobs) ...
    shard_index: int | None = None  # ... this process takes videos[shard_index::num_shards]

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.decode_workers < 1:
            raise ValueError(f"decode_workers must be >= 1, got {self.decode_workers}")
        if self.decode_timeout <= 0:
            raise ValueError(f"decode_timeout must be > 0, got {self.decode_timeout}")
        if (self.num_shards is None) != (self.shard_index is None):
            raise ValueError("num_shards and shard_index go together")
        if self.num_shards is not None and not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard_index must be in [0, {self.num_shards}), got {self.shard_index}")
        self.shard_bytes  # validates the size string

    @property
    def shard_bytes(self) -> int:
        return parse_size(self.shard_size)

    def encoder_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) - self.decode_workers)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", str(text).upper())
    if not match:
        raise ValueError(f"shard_size {text!r}: use a number with KB, MB or GB, e.g. 2GB")
    unit = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[match.group(2)]
    size = int(float(match.group(1)) * unit)
    if size <= 0:
        raise ValueError(f"shard_size {text!r} must be positive")
    return size
