"""Training faults: a kill during a save, a torn log, bad tokens, a missing shard, a full disk,
over-long rows. Each ends in a usable run or one clear line, never a lost run or a wrong number."""

import errno
import json
import os
import re
import shutil

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from redvillm.errors import UserError
from redvillm.train import checkpoint
from redvillm.train.config import TrainConfig
from redvillm.train.loop import run_train


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the injection point runs, no handler sees it."""


def config(cache, annotations, model, output, **overrides):
    base = dict(model=str(model), batch_size=4, epochs=2, lr=3e-3, num_workers=0, log_every=1, device="cpu",
                save_every=1000)
    return TrainConfig(str(cache), str(annotations), str(output), **{**base, **overrides})


def kill_at(monkeypatch, call: int, under: str = ""):
    """Make the `call`-th os.replace / shutil.rmtree whose path contains `under` die."""
    seen = {"n": 0}
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def counted(real):
        def wrapper(path, *args, **kwargs):
            if under in str(path):
                seen["n"] += 1
                if seen["n"] == call:
                    raise Killed(f"killed at {real.__name__}({path})")
            return real(path, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(os, "replace", counted(real_replace))
    monkeypatch.setattr(shutil, "rmtree", counted(real_rmtree))
    return seen


def _trainer(seed=0):
    torch.manual_seed(seed)
    adapter = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    adapter(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return adapter, optimizer, scheduler


def test_a_kill_anywhere_in_a_save_of_the_same_step_leaves_a_checkpoint(tmp_path, monkeypatch):
    """The final save (and every --resume of a finished run) saves a step that is saved already."""
    adapter, optimizer, scheduler = _trainer()
    position = checkpoint.Position(2, 0, 2)
    call = 1
    while True:
        run = tmp_path / f"kill-{call}"
        checkpoint.save(run, adapter, optimizer, scheduler, position, {})
        seen = kill_at(monkeypatch, call)
        try:
            checkpoint.save(run, adapter, optimizer, scheduler, position, {})
            finished = True
        except Killed:
            finished = False
        monkeypatch.undo()
        fresh, fresh_optimizer, fresh_scheduler = _trainer(seed=1)
        loaded = checkpoint.load(run, fresh, fresh_optimizer, fresh_scheduler, {}, torch.device("cpu"))
        assert loaded == position, f"kill at call {call}"
        torch.testing.assert_close(fresh.weight, adapter.weight)
        if finished:
            break
        call += 1
    assert seen["n"] >= 3 and call > 3  # the save was killed at each of its renames and removals
    assert len(list((tmp_path / "kill-1" / "checkpoints").glob("step-*"))) == 1  # a finished save tidies up


def test_resume_works_after_a_kill_in_the_final_save(small_cache, qa_file, tiny_llava, tmp_path, monkeypatch):
    cfg = config(small_cache, qa_file, tiny_llava, tmp_path / "run", max_steps=2, save_every=1)
    run_train(cfg)
    before = load_file(tmp_path / "run" / "adapter.safetensors")
    cfg.resume = True
    # The third rename/removal of the final save: the rename of the new directory into place.
    kill_at(monkeypatch, 3, under="checkpoints")
    with pytest.raises(Killed):
        run_train(cfg)
    monkeypatch.undo()
    again = run_train(cfg)
    assert again.steps == 2 and again.losses == []
    after = load_file(tmp_path / "run" / "adapter.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_torn_last_log_line_does_not_block_resume(small_cache, qa_file, tiny_llava, tmp_path):
    cfg = config(small_cache, qa_file, tiny_llava, tmp_path / "run", max_steps=4)
    run_train(cfg, should_stop=lambda step: step == 2)
    log = tmp_path / "run" / "train_log.jsonl"
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"step": 3, "epoch": 0, "lo')  # killed mid-write
    cfg.resume = True
    assert run_train(cfg).steps == 4
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]


@pytest.fixture
def cache_copy(small_cache, tmp_path):
    """A private copy of the small cache (index + shards, no pooled sidecar): tests break it."""
    target = tmp_path / "cache" / "cache.h5"
    target.parent.mkdir()
    shutil.copy(small_cache, target)
    shutil.copytree(small_cache.with_suffix(".shards"), target.with_suffix(".shards"))
    return target


def poison(cache, video_id, value=float("nan")):
    """One value of one video's tokens replaced in place, the way a bad disk or a buggy writer would."""
    (shard,) = cache.with_suffix(".shards").glob("r*.h5")
    with h5py.File(shard, "r+") as f:
        d = f["videos"][video_id]
        a = d[()]
        a[3, 5] = value
        d[...] = a
    return shard


def all_finite(path):
    return all(bool(torch.isfinite(v).all()) for v in load_file(path).values())


def test_a_video_with_a_nan_token_is_skipped_and_reported(cache_copy, qa_file, tiny_llava, tmp_path):
    shard = poison(cache_copy, "order_0001")
    plans = []
    summary = run_train(config(cache_copy, qa_file, tiny_llava, tmp_path / "run"), announce=plans.append)
    assert summary.skipped_videos == 1 and all(np.isfinite(summary.losses))
    assert [(b.video_id, b.shard) for b in plans[0].bad_videos] == [("order_0001", str(shard))]
    assert all_finite(tmp_path / "run" / "adapter.safetensors")
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())["bad_videos"]
    assert [(s["video_id"], s["shard"], s["rows"]) for s in skipped] == [("order_0001", str(shard), 1)]
    assert "not finite" in skipped[0]["why"]
    with pytest.raises(UserError, match=r"r000-00000.h5: video 'order_0001': 64 of (its )?25088 token values are not finite.*--strict"):
        run_train(config(cache_copy, qa_file, tiny_llava, tmp_path / "strict", strict=True))


def test_a_video_the_reader_rejects_is_skipped(cache_copy, qa_file, tiny_llava, tmp_path, monkeypatch):
    from redvillm.cache import BadTokens, TokenCache

    real = TokenCache.__getitem__

    def reader(self, video_id):
        if video_id == "direction_0002":
            raise BadTokens(video_id, self.shard_path(video_id), "checksum mismatch")
        return real(self, video_id)

    monkeypatch.setattr(TokenCache, "__getitem__", reader)
    summary = run_train(config(cache_copy, qa_file, tiny_llava, tmp_path / "run", max_steps=1))
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())["bad_videos"]
    assert summary.skipped_videos == 1 and [(s["video_id"], s["why"]) for s in skipped] == [
        ("direction_0002", "checksum mismatch")]


def _tamper_sidecar(cache, version=None):
    (pooled,) = cache.with_suffix(".pooled").glob("r*.h5")
    with h5py.File(pooled, "r+") as f:
        d = f["temporal"]["order_0002"]
        a = d[()]
        a[0, 0] = np.inf
        d[...] = a
        if version is not None:
            f.attrs["format_version"] = version
    return pooled


def test_a_sidecar_with_non_finite_values_is_rebuilt_or_refused(cache_copy, qa_file, tiny_llava, tmp_path):
    run_train(config(cache_copy, qa_file, tiny_llava, tmp_path / "a", max_steps=1))
    pooled = _tamper_sidecar(cache_copy)  # a current-format file changed after it was built
    with pytest.raises(UserError, match=rf"{pooled}: pooled tokens of video 'order_0002' are not finite.*delete it"):
        run_train(config(cache_copy, qa_file, tiny_llava, tmp_path / "b", batch_size=8, max_steps=1))
    assert not (tmp_path / "b" / "adapter.safetensors").exists()
    _tamper_sidecar(cache_copy, version=1)  # an older format, built before tokens were checked: rebuilt
    summary = run_train(config(cache_copy, qa_file, tiny_llava, tmp_path / "c", batch_size=8, max_steps=1))
    assert summary.skipped_videos == 0 and all(np.isfinite(summary.losses))


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(
        cache_copy, qa_file, tiny_llava, tmp_path, monkeypatch, where):
    import redvillm.train.loop as loop
    from redvillm.video_llm import VideoLLM

    calls = {"n": 0}
    real_loss, real_build = VideoLLM.loss_terms, loop.build_video_llm

    def loss_terms(self, batch):  # one micro-batch per step: the third call is step 3
        calls["n"] += 1
        loss, count = real_loss(self, batch)
        return (loss * float("nan") if where == "loss" and calls["n"] == 3 else loss), count

    def build(*args, **kwargs):
        llm = real_build(*args, **kwargs)
        first = next(llm.adapter.parameters())
        first.register_hook(lambda grad: grad * float("inf") if where == "gradient" and calls["n"] == 3 else grad)
        return llm

    monkeypatch.setattr(VideoLLM, "loss_terms", loss_terms)
    monkeypatch.setattr(loop, "build_video_llm", build)
    cfg = config(cache_copy, qa_file, tiny_llava, tmp_path / "run", save_every=2)
    with pytest.raises(UserError, match=r"step 3: loss .* not finite on the batch of videos \w+_\d+, \w+_\d+.*"
                                        r"checkpoint \(step 2\) stays the latest"):
        run_train(cfg)
    run = tmp_path / "run"
    assert checkpoint.latest_step(run) == 2 and not (run / "adapter.safetensors").exists()
    assert all(all_finite(p) for p in (run / "checkpoints").glob("*/*.safetensors"))
    monkeypatch.undo()
    cfg.resume = True
    resumed = run_train(cfg)
    assert resumed.steps == 4 and len(resumed.losses) == 2 and all_finite(run / "adapter.safetensors")


def train_cli(cache, annotations, model, output, *extra):
    from click.testing import CliRunner

    from redvillm.train.cli import main

    args = [cache, "--annotations", annotations, "--model", model, "--output", output, "--device", "cpu",
            "--num-workers", "0", "--batch-size", "4", "--max-steps", "1", *extra]
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_the_cli_reports_skipped_videos(cache_copy, qa_file, tiny_llava, tmp_path):
    poison(cache_copy, "direction_0000", value=float("inf"))
    result = train_cli(cache_copy, qa_file, tiny_llava, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "skipped 1 videos with unusable tokens" in result.output and "direction_0000" in result.output
    assert re.search(r"videos skipped \(unusable tokens\) +│ 1 ", result.output)


def test_a_deleted_shard_is_one_line_naming_it_and_the_fix(cache_copy, qa_file, tiny_llava, tmp_path):
    (shard,) = cache_copy.with_suffix(".shards").glob("r*.h5")
    shard.unlink()
    result = train_cli(cache_copy, qa_file, tiny_llava, tmp_path / "run")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"error: {shard}: cache shard is missing (listed in {cache_copy}); rerun the same "
                     "redvillm-extract command to re-extract its videos"]


def no_space(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_at_a_checkpoint_keeps_the_last_one_and_resume_finishes(cache_copy, qa_file, tiny_llava, tmp_path,
                                                                          monkeypatch):
    straight = run_train(config(cache_copy, qa_file, tiny_llava, tmp_path / "straight", max_steps=4))
    real = checkpoint._write_bytes

    def write(path, data):
        if path.name == "optimizer.safetensors" and "step-0000004" in str(path):
            raise no_space(path)
        return real(path, data)

    monkeypatch.setattr(checkpoint, "_write_bytes", write)
    cfg = config(cache_copy, qa_file, tiny_llava, tmp_path / "run", max_steps=4, save_every=2)
    with pytest.raises(UserError, match=r"checkpoints/.tmp-step-0000004: no space left on the device \(writing it "
                                        r"needs about 0\.\d MB, \d+\.\d MB free now\); the last complete checkpoint "
                                        r"\(step-0000002\) is kept; free space, then rerun with --resume$"):
        run_train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-0000002"]  # the partial one is gone
    monkeypatch.undo()  # space freed
    cfg.resume = True
    assert run_train(cfg).steps == 4
    a, b = load_file(tmp_path / "straight" / "adapter.safetensors"), load_file(tmp_path / "run" / "adapter.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and straight.steps == 4


def test_disk_full_at_the_final_adapter_or_the_log_is_one_line(cache_copy, qa_file, tiny_llava, tmp_path, monkeypatch):
    import redvillm.train.loop as loop
    from safetensors import SafetensorError

    def full_adapter(*args):  # what safetensors raises: the OS error is in its message only
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(loop, "save_adapter", full_adapter)
    cfg = config(cache_copy, qa_file, tiny_llava, tmp_path / "run", max_steps=2)
    with pytest.raises(UserError, match=r"adapter.safetensors: no space left .* the last complete checkpoint "
                                        r"\(step-0000002\) is kept"):
        run_train(cfg)
    monkeypatch.undo()

    real_append, calls = loop.append_journal, []

    def full_log(path, records, sync=True):  # the second step's log line finds the disk full
        calls.append(path)
        if len(calls) == 2:
            raise no_space(path)
        real_append(path, records, sync=sync)

    monkeypatch.setattr(loop, "append_journal", full_log)
    cfg = config(cache_copy, qa_file, tiny_llava, tmp_path / "log", max_steps=2, save_every=1)
    with pytest.raises(UserError, match=r"train_log.jsonl: no space left .* \(step-0000001\) is kept"):
        run_train(cfg)
    monkeypatch.undo()
    cfg.resume = True
    assert run_train(cfg).steps == 2


TMPFS_SCRIPT = """
import json, subprocess, sys
from redvillm.errors import UserError
from redvillm.train.config import TrainConfig
from redvillm.train.loop import run_train

cache, annotations, model, mount = sys.argv[1:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", mount], check=True)
cfg = TrainConfig(cache, annotations, mount + "/run", model=model, batch_size=4, max_steps=4, lr=3e-3,
                  num_workers=0, device="cpu", save_every=1, log_every=1)
try:
    run_train(cfg)
    first = "finished"
except UserError as err:
    first = str(err)
subprocess.run(["mount", "-o", "remount,size=2m", mount], check=True)  # space freed
cfg.resume = True
second = run_train(cfg).steps
print(json.dumps({"first": first, "second": second}))
"""


def test_a_real_full_filesystem(cache_copy, qa_file, tiny_llava, tmp_path):
    """A 320 KB tmpfs holds one checkpoint of the tiny model (~200 KB) but not the next beside it."""
    import subprocess
    import sys

    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) on this machine to mount a private tmpfs")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here (unshare -rm: {probe.stderr.decode().strip()})")
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["unshare", "-rm", sys.executable, "-c", TMPFS_SCRIPT, str(cache_copy), str(qa_file),
                             str(tiny_llava), str(mount)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["second"] == 4
    assert "no space left on the device" in outcome["first"] and "is kept; free space" in outcome["first"], outcome


def test_rows_longer_than_the_context_are_left_out_or_cut(small_cache, qa_file, tiny_llava, tmp_path, monkeypatch,
                                                          caplog):
    from redvillm.video_llm import VideoLLM

    rows = json.loads(qa_file.read_text())
    video = rows[0]["video_id"]
    rows.append({"video_id": video, "q": "Describe it. " + "word " * 20000, "a": "Red."})  # a 100 KB question
    rows.append({"video_id": video, "q": "Describe it.", "a": "red " * 6000})  # an answer past the context
    annotations = tmp_path / "qa.json"
    annotations.write_text(json.dumps(rows))
    longest = []
    real = VideoLLM.loss_terms

    def loss_terms(self, batch):
        longest.append(batch.input_ids.shape[1])
        if batch.input_ids.shape[1] > 4096:  # stop before the forward would ask for gigabytes
            raise MemoryError(f"a {batch.input_ids.shape[1]}-token sequence")
        return real(self, batch)

    monkeypatch.setattr(VideoLLM, "loss_terms", loss_terms)
    plans = []
    with caplog.at_level("WARNING"):
        summary = run_train(config(small_cache, annotations, tiny_llava, tmp_path / "run", batch_size=10, epochs=1),
                            announce=plans.append)
    assert summary.rows_too_long == 1 and summary.answers_cut == 1 and summary.steps == 1
    assert max(longest) == 4096  # the cut answer fills the context exactly
    assert plans[0].instructions == len(rows) - 1 and plans[0].context == 4096
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert [r["where"] for r in skipped["rows_longer_than_context"]] == [f"row {len(rows) - 2}"]
    assert skipped["rows_longer_than_context"][0]["prompt_tokens"] > 20000
    (cut,) = skipped["rows_answer_cut_to_context"]
    assert cut["where"] == f"row {len(rows) - 1}" and cut["answer_tokens"] > 6000 > cut["kept_tokens"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith(f"{annotations}: row {len(rows) - 2} (video {video}): left out") for m in warned)
    assert any(m.startswith(f"{annotations}: row {len(rows) - 1} (video {video}): answer cut") for m in warned)


def test_fit_to_context_boundaries():
    from redvillm.batching import fit_to_context
    from redvillm.chat import EncodedChat

    chat = EncodedChat([1, 2, 99, 3], [4, 5, 6], 2)  # 3 prompt tokens + the placeholder, 3 answer tokens
    assert fit_to_context(chat, video_tokens=10, context=16) is chat  # 13 + 3 = 16: fits exactly
    assert fit_to_context(chat, video_tokens=10, context=15).answer_ids == [4, 5]
    assert fit_to_context(chat, video_tokens=10, context=14).answer_ids == [4]
    assert fit_to_context(chat, video_tokens=10, context=13) is None  # no room for one answer token
    assert fit_to_context(chat, video_tokens=10, context=20, room=8) is None  # generation needs 8 tokens


def test_long_rows_are_named_by_line_in_jsonl_and_by_row_in_json(tmp_path):
    from redvillm.train.data import _row_names

    jsonl, plain = tmp_path / "qa.jsonl", tmp_path / "qa.json"
    jsonl.write_text('{"video_id": "a", "q": "?", "a": "."}\n{"video_id": "b", "q": "?", "a": "."}\n')
    plain.write_text('[{"video_id": "a", "q": "?", "a": "."},\n {"video_id": "b", "q": "?", "a": "."}]')
    assert _row_names(str(jsonl))(1) == "line 2" and _row_names(str(plain))(1) == "row 1"
