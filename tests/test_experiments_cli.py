"""The experiments' command lines (python -m redvillm.experiments.sanity | .miniature) are their configs.

Every SanityConfig / MiniatureConfig field is a flag (OUT_DIR the argument); list flags take
comma-separated values, --configurations takes groups or names; typed values reach the config the
library runs; usage errors are one line with exit code 2; a --config file's lists and text
settings convert as the flags do. The runs themselves are replaced by recording the config.
"""

import dataclasses
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from redvillm.experiments.cli import miniature, sanity
from redvillm.experiments.config import CONFIGURATIONS, GROUPS, MiniatureConfig, SanityConfig

COMMANDS = {"sanity": (sanity, SanityConfig), "miniature": (miniature, MiniatureConfig)}

# The flags as the README and users' scripts type them: renaming a field must not rename one silently.
FLAGS = {
    "sanity": "--task --seeds --poolings --train-videos --test-videos --num-frames --steps --batch-size --lr "
              "--max-grad-norm --answer-form --config",
    "miniature": "--image-llm --seeds --tasks --configurations --train-videos --test-videos --curve --num-frames "
                 "--size --steps --batch-size --lr --config",
}


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Both commands with the experiment replaced by recording its config (and writing a results table)."""
    import redvillm.experiments.miniature
    import redvillm.experiments.sanity

    seen = []

    def fake_run(cfg, log=print):
        seen.append(cfg)
        (tmp_path / cfg.out_dir).mkdir(parents=True, exist_ok=True)
        (tmp_path / cfg.out_dir / "results.md").write_text("| the table |\n")
        return type("Result", (), {"seconds": 1.0})()

    monkeypatch.setattr(redvillm.experiments.sanity, "run_sanity", fake_run)
    monkeypatch.setattr(redvillm.experiments.miniature, "run_miniature", fake_run)
    monkeypatch.chdir(tmp_path)
    return seen


@pytest.mark.parametrize("name", COMMANDS)
def test_help_lists_every_field_as_an_option(name):
    command, cls = COMMANDS[name]
    result = CliRunner().invoke(command, ["--help"], prog_name=name)
    assert result.exit_code == 0, result.output
    assert f"Usage: {name} [OPTIONS] OUT_DIR" in result.output
    for f in dataclasses.fields(cls):
        if f.name != "out_dir":
            assert "--" + f.name.replace("_", "-") + " " in result.output, f.name
    flags = [opt for p in command.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)]
    assert flags == FLAGS[name].split()
    ctx = click.Context(command)
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "config_file":
            field = next(f for f in dataclasses.fields(cls) if f.name == param.name)
            assert param.help == field.metadata.get("help"), param.name
            assert param.type_cast_value(ctx, param.default) == field.default, param.name  # --help shows the default


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("args", [["out", "--bogus"], ["out", "--seeds", "0,x"], ["out", "--steps"], []])
def test_usage_errors_are_one_line_and_exit_2(name, args, captured):
    result = CliRunner().invoke(COMMANDS[name][0], args, prog_name=name)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{name} --help" in lines[0], lines
    assert not captured


@pytest.mark.parametrize("name, args, word", [("miniature", ["out", "--configurations", "table9"], "table9"),
                                              ("miniature", ["out", "--tasks", "colour,smell"], "smell"),
                                              ("sanity", ["out", "--poolings", "both,sideways"], "sideways"),
                                              ("sanity", ["out", "--task", "still_color"], "still_color")])
def test_bad_values_are_one_line_and_exit_2(name, args, word, captured):
    result = CliRunner().invoke(COMMANDS[name][0], args, prog_name=name)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], lines
    assert not captured


def test_miniature_flags_reach_the_config(captured):
    args = ["out", "--image-llm", "llm", "--seeds", "3, 4", "--tasks", "colour,order", "--configurations",
            "table3,extra", "--train-videos", "5", "--test-videos", "6", "--curve", "", "--num-frames", "4",
            "--size", "32", "--steps", "7", "--batch-size", "2", "--lr", "0.5"]
    result = CliRunner().invoke(miniature, args)
    assert result.exit_code == 0, result.output
    assert "| the table |" in result.stdout
    configurations = tuple(n for n in CONFIGURATIONS if n in GROUPS["table3"] + GROUPS["extra"])
    assert captured == [MiniatureConfig("out", "llm", (3, 4), ("still_color", "order"), configurations, 5, 6, (), 4, 32, 7,
                                        2, 0.5)]
    names = CliRunner().invoke(miniature, ["out", "--configurations", "both, copy + MLP; both, random init"])
    assert names.exit_code == 0, names.output
    assert captured[-1].configurations == ("both, copy + MLP", "both, random init")


def test_sanity_flags_reach_the_config(captured):
    args = ["out", "--task", "count", "--seeds", "9", "--poolings", "both,spatial", "--train-videos", "5",
            "--test-videos", "6", "--num-frames", "4", "--steps", "7", "--batch-size", "2", "--lr", "0.5",
            "--max-grad-norm", "1.5", "--answer-form", "sentence"]
    result = CliRunner().invoke(sanity, args)
    assert result.exit_code == 0, result.output
    assert "| the table |" in result.stdout and "1 s" in result.stdout
    assert captured == [SanityConfig("out", "count", (9,), ("both", "frame-averaged"), 5, 6, 4, 7, 2, 0.5, 1.5,
                                     "sentence")]


@pytest.mark.parametrize("name", COMMANDS)
def test_without_flags_the_dataclass_defaults_apply(name, captured):
    command, cls = COMMANDS[name]
    result = CliRunner().invoke(command, ["out"])
    assert result.exit_code == 0, result.output
    assert captured == [cls("out")]
    if name == "miniature":
        assert captured[0].configurations == tuple(CONFIGURATIONS) and captured[0].curve == (8, 24)


@pytest.mark.parametrize("suffix, text", [(".toml", 'seeds = [5, 6]\nconfigurations = "table4"\ncurve = ""\n'
                                                    'tasks = "colour, count"\nsteps = 9\n'),
                                          (".json", '{"seeds": [5, 6], "configurations": "table4", "curve": [], '
                                                    '"tasks": ["still_color", "count"], "steps": 9}')])
def test_a_config_files_lists_and_groups_convert_like_flags(tmp_path, captured, suffix, text):
    path = tmp_path / f"settings{suffix}"
    path.write_text(text)
    result = CliRunner().invoke(miniature, ["out", "--config", str(path), "--steps", "11"])
    assert result.exit_code == 0, result.output
    cfg = captured[-1]
    assert (cfg.seeds, cfg.curve, cfg.tasks, cfg.steps) == ((5, 6), (), ("still_color", "count"), 11)
    assert cfg.configurations == tuple(GROUPS["table4"])
    bad_file = tmp_path / "bad.json"
    bad_file.write_text('{"seeds": "0,x"}')
    bad = CliRunner().invoke(miniature, ["out", "--config", str(bad_file)])
    assert bad.exit_code == 2 and bad.stderr.strip().splitlines() == [
        f"error: {bad_file}: seeds: 'x' is not a valid integer."]


def test_the_command_lines_load_no_torch():
    code = "import sys, redvillm.experiments.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
