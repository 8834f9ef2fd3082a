"""redvillm-extract as a user runs it: bad files recorded, bad arguments one line and exit 2."""

import json
import os
import subprocess
import sys

import pytest

import media
from redvillm import open_cache

EXTRACT = [sys.executable, "-m", "redvillm.extract", "--num-frames", "8", "--decode-workers", "2", "--device", "cpu"]


def run(*args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([*EXTRACT, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def failures(out):
    records = {}
    for path in sorted(out.with_suffix(".shards").glob("failures-r*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            records[record["video_id"]] = record
    return records


def test_every_kind_of_bad_file_is_recorded_and_the_run_goes_on(video_copy, tiny_llava, tmp_path):
    good = video_copy / "order_0000.mp4"
    media.zero_byte(video_copy / "empty.mp4")
    media.not_a_video(video_copy / "page.mp4")
    media.truncated(good, video_copy / "cut.mp4")
    media.garbled(good, video_copy / "noise.mkv")
    media.audio_only(video_copy / "podcast.mp4")
    # A named pipe would block a decoder for ever: it is recorded without being opened.
    listing = tmp_path / "videos.txt"
    listing.write_text("\n".join(str(p) for p in sorted(video_copy.iterdir())) + "\nhangs.mp4\nmissing.mp4\n")
    media.never_ending(tmp_path / "hangs.mp4")
    out = tmp_path / "out.h5"

    result = run(listing, out, "--model", tiny_llava, "--decode-timeout", "10")
    assert result.returncode == 0, result.stderr
    recorded = failures(out)
    assert {"empty", "page", "podcast", "hangs", "missing"} <= set(recorded)
    assert "file not found" in recorded["missing"]["reason"]
    assert "0 bytes" in recorded["empty"]["reason"]
    assert "no video stream" in recorded["podcast"]["reason"]
    assert "FIFO (named pipe)" in recorded["hangs"]["reason"]
    cache = open_cache(out)
    assert set(p.stem for p in video_copy.glob("*_*.mp4")) <= set(cache)  # every good video made it
    # A broken file is either cached (decoders salvage what they can) or recorded, never lost.
    for name in ("cut", "noise"):
        assert (name in cache) != (name in recorded)
    assert "failed" in result.stderr and "hangs.mp4" in result.stderr

    strict = run(listing, out, "--model", tiny_llava, "--strict", "--retry-failed", "--decode-timeout", "5")
    assert strict.returncode == 1
    rerun = run(listing, out, "--model", tiny_llava, "--decode-timeout", "5")
    assert rerun.returncode == 0
    assert "earlier failures, file unchanged (skipped)" in rerun.stderr  # the hung file is not retried


@pytest.mark.parametrize("case", ["missing videos", "empty folder", "out folder missing", "unwritable out",
                                  "bad list json", "not a model"])
def test_bad_arguments_give_one_line_and_exit_2(case, synthetic_videos, tiny_llava, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.json").write_text("{not json")
    videos, out, model = synthetic_videos, tmp_path / "out.h5", tiny_llava
    if case == "missing videos":
        videos = tmp_path / "nope"
    elif case == "empty folder":
        videos = tmp_path / "empty"
    elif case == "out folder missing":
        out = tmp_path / "missing" / "out.h5"
    elif case == "unwritable out":
        out = "/proc/redvillm-out.h5"
    elif case == "bad list json":
        videos = tmp_path / "list.json"
    elif case == "not a model":
        model = tmp_path / "empty"
    result = run(videos, out, "--model", model)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
