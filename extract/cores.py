"""Who gets the CPU cores during extraction: the decoder processes and the encoder's torch threads.

A fixed split starves one side. The old default (2 decoders, the encoder on the cores they
"leave": 1 thread on 2 cores) ran an encoder-bound extraction (a ViT-B/16-size tower on CPU)
2.5x slower than a serial extractor: the decoders finish their few videos ahead in a second and
then sit idle while the encoder computes on one core. Deciding the split ourselves, even per
encoder batch, is too coarse (a video of T = 16 frames is one batch, decided while the decoders
are busy with the next videos: measured 1.36x slower than the best fixed split).

So the split is the scheduler's: the encoder runs on every core, and the decoders run at a lower
priority (extract/worker.py). They only have to stay a few videos ahead: when both want a core
the encoder gets it; whenever the encoder waits for frames (decoding is behind), every core is
the decoders'. bench/extract_regimes.py measures it against hand-tuned splits and a serial
extractor, decode-bound and encoder-bound.
"""

from __future__ import annotations

import os

import torch


def usable_cpus(ranks_here: int = 1) -> int:
    """The CPUs this process may run on (its affinity mask: what a container or taskset allows),
    shared evenly among the `ranks_here` extractors torchrun started on this machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, ranks_here))


def auto_decode_workers(device: torch.device, ranks_here: int = 1) -> int:
    """Decoders for `--decode-workers auto`: one per CPU of this rank's share, less the one that
    feeds a GPU.

    With the encoder on CPU the decoders may have every core too: at their lower priority they
    take only what the encoder leaves.
    """
    cpus = usable_cpus(ranks_here)
    return max(1, cpus - 1) if device.type == "cuda" else cpus


def encoder_threads(fixed: int | None, ranks_here: int = 1) -> int:
    """The encoder's torch threads on CPU: `--threads`, else every CPU of this rank's share."""
    return fixed or usable_cpus(ranks_here)
