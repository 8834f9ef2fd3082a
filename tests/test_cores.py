"""The encoder's CPU threads follow the decoders' work (issue: real scale, section 0)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from redvillm.extract.config import ExtractConfig
from redvillm.extract.cores import EncoderThreads, auto_decode_workers, usable_cpus
from redvillm.extract.decode import STARTED, DecodeJob, DecodePool, DecodeSettings
from redvillm.extract.pipeline import run_extract
from redvillm.families.registry import load_family


def test_encoder_threads_take_every_core_no_decoder_is_using():
    decoding = iter([3, 1, 0, 0, 4, 2])
    threads = EncoderThreads(lambda: next(decoding), cores=4)
    before = torch.get_num_threads()
    try:
        seen = []
        for _ in range(6):
            threads.before_batch()
            seen.append(torch.get_num_threads())
        assert threads.history == [1, 3, 4, 4, 1, 2]  # never below one thread
        assert seen == threads.history
        fixed = EncoderThreads(lambda: 4, fixed=2, cores=4)
        fixed.before_batch()
        assert fixed.history == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_decoders_leave_a_core_to_feed_a_gpu_and_take_all_on_cpu():
    cpus = usable_cpus()
    assert cpus == len(os.sched_getaffinity(0))
    assert auto_decode_workers(torch.device("cpu")) == cpus
    assert auto_decode_workers(torch.device("cuda")) == max(1, cpus - 1)


def test_a_decoder_counts_as_decoding_only_while_it_decodes(tiny_llava, tmp_path):
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)  # opening it blocks: the worker stays in decode_video
    settings = DecodeSettings(4, "uniform", "repeat", load_family(str(tiny_llava)).frame_preprocess())
    with DecodePool(settings, num_workers=2, timeout=600) as pool:
        assert pool.decoding_now() == 0
        worker = pool._workers[0]
        pool._assign(worker, DecodeJob("stuck", Path(fifo)))  # straight down the pipe: imap refuses FIFOs unopened
        assert worker.conn.recv() == STARTED
        deadline = time.monotonic() + 30
        while pool.decoding_now() != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.decoding_now() == 1  # the other worker is idle


def test_extraction_reports_how_busy_each_side_was(synthetic_videos, tiny_llava, tmp_path):
    cfg = ExtractConfig(str(synthetic_videos), str(tmp_path / "c.h5"), model=str(tiny_llava), num_frames=4,
                        device="cpu")
    summary = run_extract(cfg)
    assert summary.extracted > 0 and summary.decode_workers == min(usable_cpus(), summary.extracted)
    decoders, encoder = summary.busy()
    assert 0 < decoders <= 1 and 0 < encoder <= 1
    assert summary.decode_seconds > 0 and summary.encode_seconds > 0
    assert f"({summary.decode_workers} processes)" in summary.load_line()
