"""ExtractConfig: every knob of stage one, typed, defaulted and checked in one place."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal

from redvillm.extract.sampling import SamplingRule, ShortVideoPolicy
from redvillm.settings import setting

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"


@dataclass
class ExtractConfig:
    videos: str = setting(path=True)  # folder of videos (recursive), a .txt/.json list of paths, or a raw cache
    output: str = setting(path=True)  # OUT.h5; shards go to OUT.shards/ beside it
    model: str = setting(DEFAULT_MODEL, "Hub id or local checkpoint directory of the image LLM.")
    revision: str | None = setting(None, "Hub revision (branch, tag or commit).")
    num_frames: int = setting(100, "T: frames sampled uniformly from each video.")
    image_size: int | None = setting(None, "Square frame size, for vision towers that take any resolution (default: "
                                           "the family's own); fixed-resolution towers refuse it and use their "
                                           "processor's size (README: Backbones).")
    sampling: SamplingRule = setting("uniform", "Frame index rule; videochatgpt reproduces Video-ChatGPT's extractor.")
    short_videos: ShortVideoPolicy = setting("repeat", "Videos with fewer than T frames: repeat frames up to T, or "
                                                       "keep fewer rows.")
    store: Literal["raw", "pooled"] = setting(
        "raw", "raw: each video's (T, N, D) frame tokens (any ablation over them); pooled: only its pooled temporal "
               "(T, D') and spatial (N', D') sets, what training and evaluation read (~1/80 of raw; README: Stores).")
    batch_size: int = setting(32, "Frames per vision-encoder forward.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "Encoder compute dtype (auto: float16/bfloat16 on CUDA, float32 on CPU).")
    decode_workers: int | Literal["auto"] = setting(
        "auto", "Decoder processes running ahead of the encoder (auto: one per usable CPU, less one when the "
                "encoder is on a GPU).")
    threads: int | None = setting(None, "Encoder torch threads on CPU (default: every usable CPU; the decoders run "
                                        "at a lower priority and take what the encoder leaves).")
    resize_on: Literal["auto", "workers", "device"] = setting(
        "auto", "Where frames are resized to the encoder's input size: in the decoder processes, or on the "
                "encoder's device from source-resolution frames (auto: on the device when it is a GPU, sparing the "
                "CPUs about a third of their work).")
    decode_timeout: float = setting(120.0, "Seconds a video may take to decode before it is skipped.")
    recycle_after: int = setting(100, "Replace a decoder process after this many videos.")
    shard_size: str = setting("2GB", "Close a shard once it holds this much.")
    overwrite: bool = setting(False, "Replace an existing OUT made with other settings.")
    strict: bool = setting(False, "Exit with code 1 if any video failed (now or in an earlier run).")
    retry_failed: bool = setting(False, "Retry earlier failures even if the file is unchanged.")
    no_space_check: bool = setting(False, "Start even if the free disk space is below the estimate (videos x T x N x "
                                          "D x 2 bytes).")
    verify: bool = setting(False, "First read every cached video; a shard failing a checksum or finite check is set "
                                  "aside (renamed *.damaged) and its videos extracted again.")
    num_shards: int | None = setting(None, "Manual scale-out without torchrun: total parts.")
    shard_index: int | None = setting(None, "Manual scale-out: this process's part.")

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.decode_workers != "auto" and not (isinstance(self.decode_workers, int) and self.decode_workers >= 1):
            raise ValueError(f"decode_workers must be 'auto' or an integer >= 1, got {self.decode_workers!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
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
