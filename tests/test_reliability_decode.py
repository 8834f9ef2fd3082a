"""Issue 10 on the extraction side: failure records, odd files, decode timeouts, orphan workers."""

import json
import os

from redvillm.cache import shards_dir
from redvillm.extract.config import ExtractConfig
from redvillm.extract.pipeline import run_extract


def _extract(videos, model, out, **overrides):
    settings = {"num_frames": 4, "decode_workers": 1, "device": "cpu", **overrides}
    return run_extract(ExtractConfig(str(videos), str(out), model=str(model), **settings))


# ---------------------------------------------------- 8: a failure record torn by a kill mid-write


def test_a_torn_failure_record_does_not_stop_the_rerun(video_copy, tiny_llava, tmp_path):
    (video_copy / "broken.mp4").write_bytes(b"not a video at all" * 100)
    out = tmp_path / "c.h5"
    first = _extract(video_copy, tiny_llava, out)
    assert [f.video_id for f in first.failures] == ["broken"]
    journal = shards_dir(out) / "failures-r000.jsonl"
    whole = journal.read_text(encoding="utf-8")
    journal.write_text(whole + whole[: len(whole) // 2], encoding="utf-8")  # killed while writing a second record

    again = _extract(video_copy, tiny_llava, out)
    assert (again.already_cached, again.skipped_failures, again.failures) == (8, 1, [])
    (video_copy / "also-broken.mp4").write_bytes(b"still not a video" * 100)
    third = _extract(video_copy, tiny_llava, out)
    assert [f.video_id for f in third.failures] == ["also-broken"]
    records = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    assert [r["video_id"] for r in records] == ["broken", "also-broken"]  # the torn tail was cut, not kept


# ------------------------------------------- 14: odd entries are failures with a reason, not ignored


def test_fifo_dangling_link_and_folder_named_like_a_video_are_listed_as_failures(video_copy, tiny_llava, tmp_path):
    os.mkfifo(video_copy / "pipe.mp4")
    (video_copy / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    (video_copy / "folder.mp4").mkdir()
    summary = _extract(video_copy, tiny_llava, tmp_path / "c.h5", decode_timeout=60)
    assert summary.found == 11 and summary.extracted == 8
    reasons = {f.video_id: f.reason for f in summary.failures}
    assert "FIFO (named pipe)" in reasons["pipe"]
    assert reasons["gone"].startswith("dangling symbolic link") and "deleted.mp4" in reasons["gone"]
    assert reasons["folder"] == "a folder, not a video file"
    assert summary.seconds < 30  # the FIFO was never opened (a worker would wait the 60 s timeout)


def test_strict_rerun_still_fails_when_earlier_failures_were_skipped(video_copy, tiny_llava, tmp_path):
    import subprocess
    import sys

    (video_copy / "broken.mp4").write_bytes(b"not a video" * 100)
    cmd = [sys.executable, "-m", "redvillm.extract", str(video_copy), str(tmp_path / "c.h5"), "--model",
           str(tiny_llava), "--num-frames", "4", "--decode-workers", "1", "--device", "cpu", "--strict"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert (first.returncode, again.returncode) == (1, 1), again.stderr[-1000:]
    assert "earlier failures" in again.stderr


def test_a_missing_local_model_directory_is_named_and_hub_ids_still_go_to_the_hub():
    import pytest

    from redvillm.errors import UserError
    from redvillm.families.registry import load_family

    for path in ("/nonexistent/llava", "./no-such-model", "../no-such-model", "~/no-such-model"):
        with pytest.raises(UserError, match=f"^{path}: directory does not exist; pass an existing"):
            load_family(path)
    with pytest.raises(UserError, match="no-such-org/no-such-model: cannot load its config.json"):
        load_family("no-such-org/no-such-model")


# ------------------------------- 12: the timeout counts decoding only; a timeout is retried once


def test_worker_start_up_does_not_count_against_the_decode_timeout(synthetic_videos, tiny_llava, tmp_path):
    """A spawned decoder takes seconds to import torch and decord; these videos decode in well
    under a tenth of a second, so a 1 s timeout must not fire."""
    summary = _extract(synthetic_videos, tiny_llava, tmp_path / "c.h5", decode_timeout=1)
    assert (summary.extracted, summary.failures) == (8, [])


def test_a_timed_out_video_is_retried_once_on_the_next_run(synthetic_videos, tiny_llava, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "slow.mp4").symlink_to(synthetic_videos / "order_0000.mp4")
    out = tmp_path / "c.h5"
    slow = {"num_frames": 48, "decode_timeout": 0.001}  # every frame of the file: tens of ms, never 1 ms

    first = _extract(videos, tiny_llava, out, **slow)
    assert first.failures[0].reason == "decode timed out after 0.001s (worker killed); retried once on the next run"
    second = _extract(videos, tiny_llava, out, **slow)
    assert second.skipped_failures == 0 and "again on its retry" in second.failures[0].reason
    assert "not retried again: pass --retry-failed" in second.failures[0].reason
    third = _extract(videos, tiny_llava, out, **slow)
    assert (third.skipped_failures, third.failures) == (1, [])
    fixed = _extract(videos, tiny_llava, out, num_frames=48, decode_timeout=60, retry_failed=True)
    assert (fixed.extracted, fixed.failures) == (1, [])


# ---------------------------------------------- 11: no decode worker outlives a killed extractor

ORPHAN_SCRIPT = """
import os, signal, sys
from pathlib import Path
from redvillm.extract.decode import STARTED, DecodeJob, DecodePool, DecodeSettings
from redvillm.families.registry import load_family

if __name__ == "__main__":
    settings = DecodeSettings(4, "uniform", "repeat", load_family(sys.argv[1]).frame_preprocess())
    pool = DecodePool(settings, num_workers=2, timeout=600)
    for worker in pool._workers:  # a FIFO straight down the pipe: imap would refuse it unopened
        pool._assign(worker, DecodeJob("stuck", Path(sys.argv[2])))
    for worker in pool._workers:
        assert worker.conn.recv() == STARTED  # decoding, i.e. blocked opening the FIFO
    print(" ".join(str(w.process.pid) for w in pool._workers), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` of the extractor
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_decode_workers_exit_when_the_extractor_is_killed(tiny_llava, tmp_path):
    import subprocess
    import sys
    import time

    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with open(tmp_path / "stderr.txt", "w") as stderr:  # a pipe would stay open in surviving workers
        script = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, str(tiny_llava), str(fifo)], env=env,
                                  stdout=subprocess.PIPE, stderr=stderr, text=True)
        pids = [int(p) for p in script.stdout.readline().split()]
        assert script.wait(timeout=120) == -9, (tmp_path / "stderr.txt").read_text()[-2000:]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if _alive(pid)]
    for pid in survivors:  # ours: clean up before failing
        os.kill(pid, 9)
    assert survivors == []
