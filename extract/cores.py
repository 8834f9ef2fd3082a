"""Who gets the CPU cores during extraction: the decoder processes and the encoder's torch threads.

A fixed split starves one side: on 2 cores the old default (2 decoders, the encoder on the
cores they "leave": 1 thread) ran an encoder-bound extraction (a ViT-B/16-size tower on CPU)
2.5x slower than a serial extractor, because the decoders finish their few videos ahead in a
second and then sit idle while the encoder computes on one core for the rest of the video.
So the split follows the work instead: before every encoder batch, the encoder takes every core
no decoder is using at that moment (decoders flag themselves busy while they decode). When
decoding is ahead, the encoder has all cores; when it is behind, the decoders keep theirs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: what a container or taskset allows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_decode_workers(device: torch.device) -> int:
    """Decoders for `--decode-workers auto`: one per usable CPU, less the one that feeds a GPU.

    With the encoder on CPU, the decoders may take every core: they only decode a few videos
    ahead, then wait, and the encoder takes the cores they are not using (EncoderThreads).
    """
    cpus = usable_cpus()
    return max(1, cpus - 1) if device.type == "cuda" else cpus


class EncoderThreads:
    """Sets the encoder's torch threads before each batch: `fixed`, or the cores no decoder uses now."""

    def __init__(self, decoding_now: Callable[[], int], fixed: int | None = None, cores: int | None = None):
        self.decoding_now, self.fixed = decoding_now, fixed
        self.cores = cores or usable_cpus()
        self.current = 0
        self.history: list[int] = []  # the thread count of each batch (the bench and tests read it)

    def before_batch(self) -> None:
        wanted = self.fixed or max(1, self.cores - self.decoding_now())
        if wanted != self.current:
            torch.set_num_threads(wanted)
            self.current = wanted
        self.history.append(wanted)
