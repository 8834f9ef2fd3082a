"""torchrun with 2 CPU processes (gloo) trains the same adapter as one process.

Each optimizer step sees the same global batch either way (the sampler splits one permutation
across ranks) and the loss is normalised by the global answer-token count, so the gradients
agree up to float summation order.
"""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file


def train_cmd(cache, qa, model, out):
    return ["-m", "redvillm.train", str(cache), "--annotations", str(qa), "--model", str(model), "--output", str(out),
            "--batch-size", "4", "--epochs", "2", "--lr", "3e-3", "--num-workers", "0", "--log-every", "1",
            "--device", "cpu", "--save-every", "3"]


def test_two_process_ddp_matches_one_process(small_cache, qa_file, tiny_llava, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, *train_cmd(small_cache, qa_file, tiny_llava, one)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    double = subprocess.run(torchrun + train_cmd(small_cache, qa_file, tiny_llava, two),
                            env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-2000:]
    a, b = load_file(one / "adapter.safetensors"), load_file(two / "adapter.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    losses = [[json.loads(line)["loss"] for line in (d / "train_log.jsonl").read_text().splitlines()] for d in (one, two)]
    assert len(losses[0]) == len(losses[1]) == 4  # written once, by rank 0
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-4, atol=1e-5)
    assert (two / "checkpoints" / "latest").read_text() == "step-0000004"  # the final state
