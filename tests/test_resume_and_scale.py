"""kill -9 at any moment and rerun: every video ends up exactly once. torchrun: same tokens."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from redvillm import open_cache

ARGS = ["--num-frames", "16", "--decode-workers", "1", "--device", "cpu"]


def env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def extract_cmd(videos, out, model, *extra):
    return [sys.executable, "-m", "redvillm.extract", str(videos), str(out), "--model", str(model), *ARGS, *extra]


def shard_contents(out):
    ids = []
    for path in sorted(out.with_suffix(".shards").glob("r*-*.h5")):
        with h5py.File(path, "r") as f:
            ids.extend(f["videos"].keys())
    return ids


def test_kill_9_then_rerun_gives_every_video_exactly_once(video_copy, tiny_llava, tmp_path):
    reference = tmp_path / "clean.h5"
    subprocess.run(extract_cmd(video_copy, reference, tiny_llava), check=True, env=env(), capture_output=True)
    out = tmp_path / "out.h5"
    shards = out.with_suffix(".shards")
    # One video per shard, so the kill lands between shards, inside one, or while the index is written.
    cmd = extract_cmd(video_copy, out, tiny_llava, "--shard-size", "1KB")
    victim = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(shards.glob("r000-0000[2-9].h5")) and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)  # the extractor and its decoder processes
    victim.wait()
    killed_with = len(shard_contents(out))
    assert 0 < killed_with < 8, "the kill should land mid-run"

    rerun = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    ids = shard_contents(out)
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 8  # exactly once each
    assert not list(shards.glob(".tmp-*"))
    cache, clean = open_cache(out), open_cache(reference)
    assert sorted(cache) == sorted(clean)
    for video_id in clean:
        np.testing.assert_array_equal(cache[video_id], clean[video_id])


def test_torchrun_two_processes_match_one(video_copy, tiny_llava, tmp_path):
    single, double = tmp_path / "one.h5", tmp_path / "two.h5"
    subprocess.run(extract_cmd(video_copy, single, tiny_llava), check=True, env=env(), capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    result = subprocess.run(torchrun + extract_cmd(video_copy, double, tiny_llava)[2:], env=env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = {p.name[:4] for p in double.with_suffix(".shards").glob("r*-*.h5")}
    assert ranks == {"r000", "r001"}  # each rank wrote its own shards
    one, two = open_cache(single), open_cache(double)
    assert sorted(one) == sorted(two) and len(two) == 8
    for video_id in one:
        np.testing.assert_array_equal(one[video_id], two[video_id])
