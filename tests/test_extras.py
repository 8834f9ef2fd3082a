"""The core install is enough for the library; each extra's absence is one line naming it.

Each check runs in a fresh interpreter where the extras' modules cannot be imported
(``sys.modules[name] = None``: ``import`` fails and ``find_spec`` answers None, as when the
package is not installed).
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from redvillm.extras import EXTRA_OF

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "import sys\nfor name in {names!r}: sys.modules[name] = None\n"


def _python(code: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    script = BLOCK.format(names=blocked) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_the_library_runs_without_the_cli_and_video_extras(small_cache, trained_run):
    code = f"""
import torch
from redvillm.cache import open_cache
from redvillm.model_io import load_model
from redvillm.evaluate.judge.results import run_judge
from redvillm.train.loop import run_train
cache = open_cache({str(small_cache)!r})
video_id = sorted(cache)[0]
model = load_model({str(trained_run)!r})
print("tokens", cache[video_id].shape, "adapter", sum(p.numel() for p in model.adapter.parameters()))
loaded = sorted(m for m in sys.modules if sys.modules[m] is not None and m.split('.')[0] in {tuple(EXTRA_OF)!r})
print("extras loaded", loaded)
"""
    result = _python(code, tuple(EXTRA_OF))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tokens (" in result.stdout and "extras loaded []" in result.stdout


@pytest.mark.parametrize("command, blocked, extra", [
    ("train", ("click",), "cli"),
    ("evaluate", ("rich",), "cli"),
    ("extract", ("click", "decord"), "cli"),
])
def test_a_command_without_its_extra_says_which_in_one_line(command, blocked, extra):
    result = _python(f"from redvillm.entry import {command}\n{command}()\n", blocked)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"pip install 'redvillm[{extra}]'" in result.stderr and blocked[0] in result.stderr


def test_decoding_a_video_without_decord_is_one_line_before_any_worker_starts():
    code = """
from redvillm.errors import UserError
from redvillm.extract.decode import DecodePool
try:
    DecodePool(settings=None, num_workers=1)
except UserError as err:
    print("refused:", err)
"""
    result = _python(code, ("decord",))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("refused: decoding videos needs decord") and "redvillm[video]" in result.stdout


def test_setup_cfg_keeps_the_extras_out_of_the_core_and_in_test():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requirement = lambda line: line.split(">")[0].split("<")[0].split("=")[0].strip()  # noqa: E731
    core = {requirement(line) for line in cfg["options"]["install_requires"].split("\n") if line.strip()}
    extras = {name: {requirement(line) for line in text.split("\n") if line.strip()}
              for name, text in cfg["options.extras_require"].items()}
    packages = {"click": "click", "rich": "rich", "decord": "decord", "av": "av", "starlette": "starlette",
                "uvicorn": "uvicorn"}
    for module, extra in EXTRA_OF.items():
        assert packages[module] not in core, f"{module} is in the core install"
        assert packages[module] in extras[extra], f"{module} missing from the {extra} extra"
        assert packages[module] in extras["test"], f"{module} missing from the test extra"
    scripts = cfg["options.entry_points"]["console_scripts"]
    assert scripts.count("redvillm.entry:") == 4, "every console script goes through the extras check"
