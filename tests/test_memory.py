"""Flat memory over many videos: extraction trims the heap after each one (redvillm/memory.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from redvillm import memory
from redvillm.extract import pipeline
from redvillm.extract.config import ExtractConfig


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._glibc() is None, reason="glibc only")
def test_trim_heap_returns_the_free_pages_of_a_fragmented_heap():
    blocks = [np.ones(12_500) for _ in range(4000)]  # 100 KB each: below any mmap threshold, from the heap
    del blocks[::2]  # every other block freed: 200 MB of holes that no shrinking of the heap's top gives back
    before = _rss_mib()
    assert memory.trim_heap()
    assert before - _rss_mib() > 100, (before, _rss_mib())
    del blocks


def test_extraction_trims_the_heap_after_every_video(synthetic_videos, tiny_llava, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "trim_heap", lambda: calls.append(1))
    summary = pipeline.run_extract(ExtractConfig(str(synthetic_videos), str(tmp_path / "c.h5"), model=str(tiny_llava),
                                                 num_frames=4, device="cpu"))
    assert summary.extracted == 8 and len(calls) == 8
