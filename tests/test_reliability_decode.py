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
