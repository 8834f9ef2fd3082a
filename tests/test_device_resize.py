"""Frames resized on the encoder's device, and handed over through shared memory without leaks.

- Resizing in the main process from source-resolution frames (resize_on="device", here on CPU)
  caches the same tokens, bit for bit, and the same per-video attributes as resizing in the
  decoders, for LLaVA (pad to square, shortest edge, crop) and DeepSeek-VL (longest edge, pad).
- No shared-memory block is left in /dev/shm after a normal run, a decode timeout, a killed
  worker, a killed extractor or a block removed under the run (a per-video failure), and the
  resource tracker has nothing to complain about.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import media
from redvillm import open_cache
from redvillm.extract import handoff, pipeline
from redvillm.extract.config import ExtractConfig
from redvillm.extract.decode import DecodeJob, DecodePool, DecodeSettings, resize_in_workers
from redvillm.families.registry import load_family

SHM = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm (Linux)")


def leftovers(pid: int) -> list[str]:
    """The blocks process `pid` left in /dev/shm, removed (a failing test must not leak either)."""
    paths = sorted(SHM.glob(f"{handoff.PREFIX}{pid}_*"))
    for path in paths:
        path.unlink()
    return [path.name for path in paths]


@pytest.fixture
def odd_videos(video_copy) -> Path:
    """The sample videos (square) with a landscape and a portrait clip: padding has work to do."""
    media.texture_clip(video_copy / "wide.mp4", 160, 96, 12, seed=1)
    media.texture_clip(video_copy / "tall.mp4", 96, 144, 12, seed=2)
    return video_copy


def test_auto_resizes_in_the_workers_on_cpu_only():
    assert resize_in_workers(torch.device("cpu")) is True
    assert resize_in_workers(torch.device("cuda")) is False
    assert resize_in_workers(torch.device("cpu"), "device") is False
    assert resize_in_workers(torch.device("cuda"), "workers") is True
    with pytest.raises(ValueError, match="resize_on"):
        resize_in_workers(torch.device("cpu"), "gpu")


@pytest.mark.parametrize("family", ["llava", "deepseek_vl"])
def test_device_resize_caches_the_same_tokens_and_attrs(family, odd_videos, tiny_model, tmp_path, monkeypatch):
    model = tiny_model(family, f"tiny_{family}")
    paths = []  # which path each video took, as encode_frames was told
    real = pipeline.encode_frames

    def spy(*args, resize=False, **kwargs):
        paths.append(resize)
        return real(*args, resize=resize, **kwargs)

    monkeypatch.setattr(pipeline, "encode_frames", spy)
    caches = {}
    for where in ("workers", "device"):
        paths.clear()
        out = tmp_path / f"{where}.h5"
        summary = pipeline.run_extract(ExtractConfig(str(odd_videos), str(out), model=str(model), num_frames=6,
                                                     batch_size=4, decode_workers=2, device="cpu", resize_on=where))
        assert (summary.extracted, summary.failures) == (10, [])
        assert paths == [where == "device"] * 10
        caches[where] = open_cache(out)
    workers, device = caches["workers"], caches["device"]
    assert sorted(workers.keys()) == sorted(device.keys())
    for key in workers.keys():
        assert np.array_equal(workers[key], device[key]), key
        assert _attrs(workers.meta(key)) == _attrs(device.meta(key)), key
    assert (workers.meta("wide")["height"], workers.meta("wide")["width"]) == (96, 160)
    assert leftovers(os.getpid()) == []


def _attrs(meta: dict) -> dict:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in meta.items()}


def test_workers_ship_source_frames_unless_a_video_exceeds_the_budget(odd_videos, tiny_llava):
    spec = load_family(str(tiny_llava)).frame_preprocess()
    job = DecodeJob("wide", odd_videos / "wide.mp4")
    with DecodePool(DecodeSettings(6, "uniform", "repeat", spec, resize=False), num_workers=1) as pool:
        [source] = pool.imap([job])
    assert (source.resized, source.frames.shape) == (False, (6, 96, 160, 3))
    budget = DecodeSettings(6, "uniform", "repeat", spec, resize=False, source_budget=6 * 96 * 160 * 3 - 1)
    with DecodePool(budget, num_workers=1) as pool:
        [resized] = pool.imap([job])
    assert (resized.resized, resized.frames.shape) == (True, (6, 3, 224, 224))
    assert leftovers(os.getpid()) == []


def test_a_block_without_room_falls_back_to_the_pipe(monkeypatch):
    def no_room(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    block = handoff.FrameBlock(handoff.block_name())
    frames = block.allocate((2, 4, 4, 3))
    assert frames.shape == (2, 4, 4, 3) and block.describe(frames) is None
    assert not (SHM / block.name).exists()


# -------------------------------------------- leaks: each scenario in its own extractor process

SCENARIO = """
import os, signal, sys, time
from pathlib import Path
from redvillm.extract.decode import STARTED, DecodeJob, DecodePool, DecodeSettings
from redvillm.families.registry import load_family


def slow_video_with_its_block(pool, video):
    # One keyframe and T = 300 of 100 frames, one per get_batch: every repeated index seeks back
    # to the start, so decoding takes seconds and the block (made after the first frame) waits.
    worker = pool._workers[0]
    pool._assign(worker, DecodeJob("slow", video))
    assert worker.conn.recv() == STARTED
    worker.started = time.perf_counter()
    while not Path("/dev/shm", worker.block).exists():
        time.sleep(0.001)
    time.sleep(0.05)  # the block is registered with the resource tracker just after it appears
    return worker


if __name__ == "__main__":
    scenario, model, videos = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    spec = load_family(model).frame_preprocess()
    slow = DecodeSettings(300, "uniform", "repeat", spec, chunk=1, resize=False)
    print(os.getpid(), flush=True)
    if scenario == "normal":
        with DecodePool(DecodeSettings(6, "uniform", "repeat", spec, resize=False), 2, recycle_after=3) as pool:
            results = list(pool.imap(DecodeJob(p.stem, p) for p in sorted(videos.glob("*.mp4"))))
        print(sorted({r.frames.shape for r in results}), flush=True)
        print("blocks while running:", sorted(p.name for p in Path("/dev/shm").glob(f"redvillm_{os.getpid()}_*")))
        sys.exit(0)
    with DecodePool(slow, num_workers=1, timeout=1.0 if scenario == "timeout" else 600) as pool:
        worker = slow_video_with_its_block(pool, videos / "slow.mp4")
        if scenario == "parent":
            os.kill(os.getpid(), signal.SIGKILL)
        if scenario == "lost":
            assert worker.conn.poll(120)  # decoded: the result waits in the pipe, its block in /dev/shm
            os.unlink(Path("/dev/shm", worker.block))
        else:
            os.kill(worker.process.pid, signal.SIGSTOP)  # stuck, as far as the pool can tell
            assert not worker.conn.poll(0.2), "the worker finished before it was stopped: make it slower"
            if scenario == "killed":
                os.kill(worker.process.pid, signal.SIGKILL)
        print(next(pool.imap([])).error, flush=True)
        print("blocks while running:", sorted(p.name for p in Path("/dev/shm").glob(f"redvillm_{os.getpid()}_*")))
        if scenario == "lost":  # the pool goes on: the next video decodes
            print(next(pool.imap([DecodeJob("next", videos / "wide.mp4")])).frames.shape, flush=True)
"""


@pytest.fixture(scope="module")
def leak_videos(tmp_path_factory, synthetic_videos) -> Path:
    """slow.mp4 and wide.mp4; normal/: the sample videos (square) and wide.mp4."""
    root = tmp_path_factory.mktemp("leaks")
    media.texture_clip(root / "slow.mp4", 160, 96, 100)
    media.texture_clip(root / "wide.mp4", 160, 96, 12)
    (root / "normal").mkdir()
    for path in [*synthetic_videos.glob("*.mp4"), root / "wide.mp4"]:
        (root / "normal" / path.name).symlink_to(path)
    return root


def _run(scenario: str, tiny_llava, videos: Path) -> tuple[int, list[str], str]:
    """(pid, lines printed, stderr) of the scenario's extractor process, once it and its resource
    tracker have exited (the tracker keeps the stderr pipe open, so run() waits for it too)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", SCENARIO, scenario, str(tiny_llava), str(videos)],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = done.stdout.splitlines()
    if scenario == "parent":
        assert done.returncode == -9, done.stderr[-2000:]
    else:
        assert done.returncode == 0, done.stderr[-2000:]
    return int(lines[0]), lines[1:], done.stderr


@pytest.mark.parametrize("scenario, reason", [
    ("normal", "[(6, 96, 96, 3), (6, 96, 160, 3)]"),
    ("timeout", "decode timed out after 1s (worker killed); retried once on the next run"),
    ("killed", "decoder process died (exit code -9)"),
    ("lost", "the decoded frames were lost: shared memory block redvillm_"),
])
def test_no_block_is_left_behind(scenario, reason, tiny_llava, leak_videos):
    pid, lines, stderr = _run(scenario, tiny_llava, leak_videos / "normal" if scenario == "normal" else leak_videos)
    assert lines[0].startswith(reason), lines
    assert lines[1] == "blocks while running: []"  # removed at once, not by the resource tracker at the end
    if scenario == "lost":
        assert lines[0].endswith("was removed before the extractor read it") and lines[2] == "(300, 96, 160, 3)"
    assert leftovers(pid) == []
    assert "resource_tracker" not in stderr and "Traceback" not in stderr, stderr[-2000:]


def test_the_resource_tracker_removes_the_blocks_of_a_killed_extractor(tiny_llava, leak_videos):
    """kill -9 of the extractor: its workers die with it (PR_SET_PDEATHSIG) and the tracker,
    the last one holding their pipe, unlinks the blocks still registered. It says so on stderr."""
    pid, _, stderr = _run("parent", tiny_llava, leak_videos)
    assert leftovers(pid) == []
    assert "leaked shared_memory objects" in stderr


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "copied"])
def test_take_hands_the_frames_over_and_removes_the_block(mapped, monkeypatch):
    if not mapped:  # as where shared memory is no file (macOS)
        monkeypatch.setattr(handoff, "SHM_DIR", "/nonexistent")
    sent = np.random.default_rng(0).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    block = handoff.FrameBlock(handoff.block_name())
    frames = block.allocate(sent.shape)
    frames[:] = sent
    ref = block.describe(frames)
    del frames
    block.close()
    got = handoff.take(ref)
    assert np.array_equal(got, sent) and got.flags.writeable and not (SHM / ref.name).exists()
