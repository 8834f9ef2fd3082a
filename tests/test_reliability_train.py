"""Training faults: a kill during a save, a torn log, bad tokens, a missing shard, a full disk,
over-long rows. Each ends in a usable run or one clear line, never a lost run or a wrong number."""

import errno
import json
import os
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
