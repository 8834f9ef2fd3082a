"""A stored loss curve: six optimizer steps of a tiny fixed-seed run must give the losses in
tests/golden_loss.json (rtol 1e-4), so a torch or transformers upgrade (or a change of ours) that
silently changes training shows up here, not in a published number.

The run: the tiny LLaVA replica, the sample videos' cache at T = 8, CPU, float32, seed 0,
num_workers 0, global batch 4, lr 3e-3, max_steps 6, one log record per step.

Regenerating: `REDVILLM_WRITE_GOLDEN=1 python -m pytest -q tests/test_golden_loss.py`, then run
the test again without the variable to check the new values repeat. Do it only when the change in
the curve is understood and intended: a deliberate change of the loss, the recipe, the prompt or
the tiny replica, or a library upgrade whose numerical difference has been looked at (the old and
new curves side by side in the commit message). A drift nobody can explain is a bug to find.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import transformers

from redvillm.train.config import TrainConfig
from redvillm.train.loop import run_train

GOLDEN = Path(__file__).with_name("golden_loss.json")


def _losses(small_cache, qa_file, tiny_llava, output) -> list[float]:
    run_train(TrainConfig(str(small_cache), str(qa_file), str(output), model=str(tiny_llava), batch_size=4,
                          epochs=100, max_steps=6, lr=3e-3, num_workers=0, log_every=1, device="cpu",
                          dtype="float32", seed=0))
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    return [r["loss"] for r in steps]


def test_tiny_run_reproduces_its_stored_loss_curve(small_cache, qa_file, tiny_llava, tmp_path):
    losses = _losses(small_cache, qa_file, tiny_llava, tmp_path / "run")
    if os.environ.get("REDVILLM_WRITE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"losses": losses, "torch": torch.__version__,
                                      "transformers": transformers.__version__}, indent=1) + "\n")
        pytest.skip(f"wrote {GOLDEN.name}; rerun without REDVILLM_WRITE_GOLDEN to check it")
    stored = json.loads(GOLDEN.read_text())
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                               torch.tensor(stored["losses"], dtype=torch.float64), rtol=1e-4, atol=0,
                               msg=lambda m: f"loss curve moved (stored with torch {stored['torch']}, transformers "
                                             f"{stored['transformers']}; now {torch.__version__}, "
                                             f"{transformers.__version__}): {m}")
