"""The data commands (`python -m redvillm.data.<module>`) and the benchmarks (`python bench/<name>.py`)
on click: each lists today's flags (README, bench/README.md and docs type them) with today's
defaults, refuses an unknown flag or a bad value with exit code 2 and one error line, and the
cheap ones run for real. The synthetic generator's and the replicas' real runs are in
test_synthetic.py, test_tiny_llava.py and the family conformance suite.
"""

import importlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from redvillm.data.cli import demo_command, image_llm_command, replica_command, synthetic_command

ROOT = Path(__file__).resolve().parents[1]
REPLICA_FLAGS = {
    "tiny_llava": "--image-size --seed",
    "tiny_qwen2_vl": "--variant --seed",
    "tiny_deepseek_vl": "--image-size --seed",
    "tiny_deepseek_vl_hybrid": "--seed",
    "tiny_internvl": "--seed",
    "tiny_llava_onevision": "--seed",
    "tiny_gemma3": "--seed",
}
DATA_FLAGS = {
    "synthetic": "--num-videos --tasks --num-frames --fps --size --seed",
    "tiny_image_llm": "--image-size --patch-size --vision-hidden --vision-layers --text-hidden --text-layers "
                      "--text-heads --vocab-size --steps --batch-size --lr --warmup --eval-samples --threads --seed",
    "demo": "",
}
# The defaults users rely on (README's and docs' commands name only some flags).
DATA_DEFAULTS = {
    "synthetic": dict(num_videos=8, tasks="order,direction", num_frames=48, fps=8, size=224, seed=0),
    "tiny_image_llm": dict(image_size=64, patch_size=16, steps=2000, batch_size=32, lr=5e-4, threads=1, seed=0),
    "tiny_llava": dict(image_size=224, seed=0),
    "tiny_qwen2_vl": dict(variant="qwen2_vl", seed=0),
    "tiny_deepseek_vl": dict(image_size=64, seed=0),
}
BENCH_FLAGS = {
    "extract": "--videos --frames --workers --threads --rounds --out-dir --json --storage-only",
    "train": "--videos --frames --batch --steps --workers --rss-steps --threads --out-dir --json",
    "infer": "--questions --new-tokens --threads --json",
    "serve": "--requests --clients --new-tokens --rounds --batch-wait-ms --threads --json",
    "encoder": "--batch --small-batch --threads --rounds --min-seconds --towers --compare --json",
}
BENCH_BAD = {"extract": ["--videos", "3"], "train": ["--batch", "60"], "infer": ["--questions", "0"],
             "serve": ["--clients", "0"], "encoder": ["--compare", "eager,sideways"]}


def data_command(name: str):
    if name in REPLICA_FLAGS:
        return replica_command(importlib.import_module(f"redvillm.data.{name}").CLI)
    return {"synthetic": synthetic_command, "tiny_image_llm": image_llm_command, "demo": demo_command}[name]()


def listed_flags(help_text: str) -> list[str]:
    """The long flags --help lists, in order (one option per line, `-h, --help` included)."""
    return re.findall(r"^\s+(?:-\w, )?(--[a-z][\w-]*)", help_text, re.M)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize("name", [*DATA_FLAGS, *REPLICA_FLAGS])
def test_data_command_help_lists_todays_flags_and_defaults(name):
    result = CliRunner().invoke(data_command(name), ["--help"])
    assert result.exit_code == 0, result.output
    expected = (DATA_FLAGS.get(name) or REPLICA_FLAGS.get(name, "")).split()
    config = [] if name == "demo" else ["--config"]
    assert listed_flags(result.output) == [*expected, *config, "--help"]
    assert "OUT_DIR" in result.output
    defaults = {p.name: p.default for p in data_command(name).params}
    for flag, default in DATA_DEFAULTS.get(name, {}).items():
        assert defaults[flag] == default, flag


@pytest.mark.parametrize("name", ["synthetic", "tiny_image_llm", "demo", "tiny_llava", "tiny_qwen2_vl"])
def test_data_command_refuses_an_unknown_flag_in_one_line(name, tmp_path):
    result = CliRunner().invoke(data_command(name), [str(tmp_path / "out"), "--no-such-flag"])
    assert result.exit_code == 2
    assert re.fullmatch(r"error: No such option:? '?--no-such-flag'?\.? \(see \S+ --help\)", one_error_line(result.stderr))
    assert not (tmp_path / "out").exists()


def test_a_replica_refuses_a_bad_choice_in_one_line(tmp_path):
    result = CliRunner().invoke(data_command("tiny_qwen2_vl"), [str(tmp_path / "out"), "--variant", "qwen3"])
    assert result.exit_code == 2 and "qwen3" in one_error_line(result.stderr)


def test_image_llm_command_trains_and_reports_its_accuracy(tmp_path):
    flags = ["--steps", "2", "--batch-size", "2", "--eval-samples", "4", "--vocab-size", "400"]
    result = CliRunner().invoke(image_llm_command(), [str(tmp_path / "llm"), *flags], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    accuracy = json.loads(result.output[result.output.index("{"):])
    assert 0.0 <= accuracy["all"] <= 1.0
    recipe = json.loads((tmp_path / "llm" / "image_llm_recipe.json").read_text())
    assert (recipe["steps"], recipe["batch_size"], recipe["vocab_size"]) == (2, 2, 400)
    assert (tmp_path / "llm" / "model.safetensors").is_file()


def test_python_dash_m_runs_the_data_command():
    done = subprocess.run([sys.executable, "-m", "redvillm.data.synthetic", "--help"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: python -m redvillm.data.synthetic [OPTIONS] OUT_DIR")


@pytest.fixture(scope="module")
def bench_main():
    """bench_main(name) -> the click command of bench/<name>.py, loaded as `python bench/<name>.py` would
    (its folder first on sys.path, so bench/train.py finds its train_*.py siblings)."""
    sys.path.insert(0, str(ROOT / "bench"))
    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
            module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
            spec.loader.exec_module(module)
            loaded[name] = module.main
        return loaded[name]

    yield load
    sys.path.remove(str(ROOT / "bench"))


@pytest.mark.parametrize("name", BENCH_FLAGS)
def test_bench_script_help_lists_todays_flags(name, bench_main):
    result = CliRunner().invoke(bench_main(name), ["--help"])
    assert result.exit_code == 0, result.output
    assert listed_flags(result.output) == [*BENCH_FLAGS[name].split(), "--config", "--help"]
    assert "--rss-child" not in result.output  # the peak-RSS children's entry stays hidden


@pytest.mark.parametrize("name", BENCH_FLAGS)
def test_bench_script_refuses_an_unknown_flag_and_a_bad_value_in_one_line(name, bench_main):
    unknown = CliRunner().invoke(bench_main(name), ["--no-such-flag"])
    assert unknown.exit_code == 2
    assert re.fullmatch(r"error: No such option:? '?--no-such-flag'?\.? \(see \S+ --help\)", one_error_line(unknown.stderr))
    bad = CliRunner().invoke(bench_main(name), BENCH_BAD[name])
    assert bad.exit_code == 2
    assert one_error_line(bad.stderr).startswith("error: --")


def test_the_split_bench_script_runs_as_a_script():
    """bench/train.py imports its siblings as top-level modules: as bench/README.md runs it, from the repo."""
    done = subprocess.run([sys.executable, "bench/train.py", "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: train.py [OPTIONS]")
