"""Who gets the cores: decoders at a lower priority, the encoder on every core (issue: real scale, section 0)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from redvillm.extract.config import ExtractConfig
from redvillm.extract.cores import auto_decode_workers, encoder_threads, usable_cpus
from redvillm.extract.decode import STARTED, DecodeJob, DecodePool, DecodeSettings
from redvillm.extract.pipeline import run_extract
from redvillm.extract.worker import DECODER_NICENESS
from redvillm.families.registry import load_family


def test_auto_decoders_leave_a_core_to_feed_a_gpu_and_take_all_on_cpu():
    cpus = usable_cpus()
    assert cpus == len(os.sched_getaffinity(0))
    assert auto_decode_workers(torch.device("cpu")) == cpus
    assert auto_decode_workers(torch.device("cuda")) == max(1, cpus - 1)
    assert encoder_threads(None) == cpus and encoder_threads(3) == 3


def test_decoders_run_at_a_lower_priority_than_the_extractor(tiny_llava, tmp_path):
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)  # opening it blocks: the worker stays alive in decode_video while we look at it
    settings = DecodeSettings(4, "uniform", "repeat", load_family(str(tiny_llava)).frame_preprocess())
    with DecodePool(settings, num_workers=1, timeout=600) as pool:
        worker = pool._workers[0]
        worker.conn.send((DecodeJob("stuck", Path(fifo)), None))  # straight down the pipe: imap refuses FIFOs
        assert worker.conn.recv() == STARTED
        mine, theirs = os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS, worker.process.pid)
        assert theirs == min(mine + DECODER_NICENESS, 19), (mine, theirs)


def test_extraction_uses_every_core_and_reports_how_busy_each_side_was(synthetic_videos, tiny_llava, tmp_path):
    cfg = ExtractConfig(str(synthetic_videos), str(tmp_path / "c.h5"), model=str(tiny_llava), num_frames=4,
                        device="cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        summary = run_extract(cfg)
        assert torch.get_num_threads() == usable_cpus()
    finally:
        torch.set_num_threads(before)
    assert summary.extracted > 0 and summary.decode_workers == min(usable_cpus(), summary.extracted)
    decoders, encoder = summary.busy()
    assert 0 < decoders <= 1 and 0 < encoder <= 1
    assert summary.decode_seconds > 0 and summary.encode_seconds > 0
    assert f"({summary.decode_workers} processes)" in summary.load_line()


def test_the_load_line_names_the_busier_side_or_start_up():
    from redvillm.extract.pipeline import ExtractSummary

    summary = ExtractSummary(Path("c.h5"), 1, 0, 0, 1, seconds=10.0, decode_workers=2)
    summary.decode_seconds, summary.encode_seconds = 18.0, 3.0  # decoders 90%, encoder 30%
    assert "the limit was decoding" in summary.load_line()
    summary.decode_seconds, summary.encode_seconds = 4.0, 9.0
    assert "the limit was the encoder" in summary.load_line()
    summary.decode_seconds, summary.encode_seconds = 0.1, 0.1
    assert "start-up" in summary.load_line()
