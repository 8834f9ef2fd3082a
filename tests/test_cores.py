"""Who gets the cores: decoders at a lower priority, the encoder on every core (issue: real scale, section 0)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
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


def test_ranks_on_one_machine_share_its_cpus(monkeypatch):
    """torchrun's ranks on one box each get their share, not every CPU (8 ranks x 63 decoders)."""
    from redvillm import distributed

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert usable_cpus(8) == 8 and auto_decode_workers(torch.device("cuda"), 8) == 7
    assert encoder_threads(None, 8) == 8 and usable_cpus(128) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert distributed.init_from_env().local_world_size == 8


def test_decoders_fork_from_a_server_that_imported_torch_once(tiny_llava):
    """Workers start in milliseconds: the forkserver imported torch and decord before forking them."""
    from redvillm.extract.decode import PRELOAD, decoder_context

    assert decoder_context().get_start_method() == "forkserver"
    assert {"torch", "decord", "redvillm.extract.worker"} <= set(PRELOAD)
    settings = DecodeSettings(4, "uniform", "repeat", load_family(str(tiny_llava)).frame_preprocess())
    with DecodePool(settings, num_workers=1) as pool:
        with open(f"/proc/{pool._workers[0].process.pid}/stat") as stat:
            parent = int(stat.read().rsplit(")", 1)[1].split()[1])
    assert parent != os.getpid()  # the forkserver's child, not ours


def test_a_refused_run_leaves_no_decoder_running(synthetic_videos, tiny_llava, tmp_path):
    import multiprocessing

    from redvillm.errors import UserError

    out = tmp_path / "notes.h5"
    out.write_text("my notes, not a cache\n")  # refused once the encoder is loaded and the forkserver warm
    cfg = ExtractConfig(str(synthetic_videos), str(out), model=str(tiny_llava), num_frames=4, device="cpu")
    with pytest.raises(UserError, match="not a readable redvillm cache"):
        run_extract(cfg)
    assert multiprocessing.active_children() == []


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


def test_decoders_resize_a_few_frames_at_a_time_to_the_same_pixels(tiny_llava, monkeypatch):
    """Resizing in small batches (heap-reused float buffers: a third less CPU at 480p) changes
    no pixel: the frames of a chunk come out as resize_and_crop gives them all at once."""
    from redvillm.extract import decode
    from redvillm.frames import resize_and_crop

    spec = load_family(str(tiny_llava)).frame_preprocess()
    frames = torch.randint(0, 256, (7, 90, 120, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(decode, "RESIZE_BYTES", 3 * frames[0].numel() * 4)  # three frames per batch: 3 + 3 + 1
    assert np.array_equal(decode._resize(frames, spec), resize_and_crop(frames, spec).numpy())


def test_frames_reach_a_cpu_encoder_without_a_copy():
    from redvillm.extract.pipeline import to_device

    frames = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    assert to_device(frames, torch.device("cpu")) is frames


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (this project's machines have none)")
def test_frames_reach_a_gpu_encoder_through_page_locked_memory(tiny_llava, monkeypatch):
    from redvillm.extract.pipeline import encode_frames

    family = load_family(str(tiny_llava))
    spec = family.frame_preprocess()
    frames = torch.randint(0, 256, (5, 3, *spec.fixed_output_hw()), dtype=torch.uint8)
    pinned, pin = [], torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pinned.append(1) or pin(self, *a))
    on_gpu = encode_frames(family.load_frame_encoder(torch.device("cuda"), torch.float32), frames, 2,
                           torch.device("cuda"), torch.float32, spec)
    on_cpu = encode_frames(family.load_frame_encoder(torch.device("cpu"), torch.float32), frames, 2,
                           torch.device("cpu"), torch.float32, spec)
    assert len(pinned) == 3  # one per batch of 2 frames
    assert np.allclose(on_gpu.astype(np.float32), on_cpu.astype(np.float32), atol=2e-2)
