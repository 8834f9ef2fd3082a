"""The typed config is the CLI: every command's flags come from its config dataclass.

Checks (1) each command's options against its dataclass (names, defaults, choices) and against
today's flag names, which users' scripts and the README type; (2) `--config FILE` (JSON, TOML)
precedence: flags typed on the command line, then the file, then the defaults; (3) an unknown key
in a config file is a one-line error naming the file and the key.
"""

import dataclasses
import json
import typing

import click
import pytest
from click.testing import CliRunner

from redvillm.cli import config_from, options_from
from redvillm.evaluate.cli import main as eval_main
from redvillm.evaluate.config import JUDGE_TASKS, JudgeConfig, PredictConfig
from redvillm.extract.cli import main as extract_main
from redvillm.extract.config import ExtractConfig
from redvillm.serve.cli import main as serve_main
from redvillm.serve.config import ServeConfig
from redvillm.train.cli import main as train_main
from redvillm.train.config import TrainConfig

COMMANDS = {
    "extract": (extract_main, ExtractConfig, ("videos", "output")),
    "train": (train_main, TrainConfig, ("cache",)),
    "predict": (eval_main.commands["predict"], PredictConfig, ()),
    "judge": (eval_main.commands["judge"], JudgeConfig, ("predictions",)),
    "serve": (serve_main, ServeConfig, ("run_dir",)),
}

# The flags as users type them (README, scripts): renaming a field must not rename one silently.
FLAGS = {
    "extract": "--model --revision --num-frames --image-size --sampling --short-videos --store --batch-size --device --dtype "
               "--decode-workers --threads --resize-on --decode-timeout --recycle-after --shard-size --overwrite "
               "--strict --retry-failed --no-space-check --verify --num-shards --shard-index --config",
    "train": "--annotations --output --model --revision --pooling --temporal-module --lr --epochs --batch-size "
             "--grad-accum --warmup-ratio --weight-decay --max-grad-norm --max-steps --seed --device --dtype "
             "--gradient-checkpointing --save-every --resume --overwrite --strict --num-workers --pooled-dir "
             "--log-every --config",
    "predict": "--model-dir --cache --questions --output --answers --task --batch-size --max-new-tokens --do-sample "
               "--temperature --top-p --seed --device --dtype --overwrite --config",
    "judge": "--task --output --dataset --judge-url --judge-model --judge-local --api-key-env --protocol "
             "--official-scripts --original-scoring --attempts --retries --timeout --row-timeout "
             "--stop-after-failures --workers --cache --dry-run --config",
    "serve": "--host --port --model-name --device --dtype --max-batch --batch-wait-ms --default-max-tokens "
             "--max-tokens --max-video-mb --download-timeout --decode-workers --decode-timeout --request-timeout "
             "--max-pending --local-files --no-local-files --remote-urls --no-remote-urls --config",
}


def _literal_choices(hint):
    for candidate in (hint, *typing.get_args(hint)):  # Literal[...] or Literal[...] | None
        if typing.get_origin(candidate) is typing.Literal:
            return list(typing.get_args(candidate))
    return None


@pytest.mark.parametrize("name", COMMANDS)
def test_generated_options_agree_with_the_dataclass(name):
    command, cls, positional = COMMANDS[name]
    params = {p.name: p for p in command.params}
    hints = typing.get_type_hints(cls)
    assert set(params) == {f.name for f in dataclasses.fields(cls)} | {"config_file"}
    for f in dataclasses.fields(cls):
        param = params[f.name]
        if f.name in positional:
            assert isinstance(param, click.Argument), f.name
            continue
        assert param.opts == ["--" + f.name.replace("_", "-")], f.name
        required = f.default is dataclasses.MISSING
        assert param.required == required, f.name
        if not required:
            assert param.default == f.default, f.name
            assert type(param.default) is type(f.default), f.name
        assert param.help == f.metadata.get("help"), f.name
        choices = _literal_choices(hints[f.name])
        words = getattr(param.type, "choices", None) or getattr(param.type, "words", None)  # Choice, IntOrChoice
        assert (list(words) if words else None) == choices, f.name
    flags = [opt for p in command.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)]
    assert flags == FLAGS[name].split()


def test_judge_tasks_are_the_judges_criteria():
    from redvillm.evaluate.judge import CRITERIA

    assert JUDGE_TASKS == CRITERIA


@pytest.fixture
def captured(monkeypatch):
    """redvillm-train's command with the training replaced by recording the config it was given."""
    seen = []

    def fake_run_train(cfg, progress, announce):
        seen.append(cfg)
        raise SystemExit(0)

    import redvillm.train.loop

    monkeypatch.setattr(redvillm.train.loop, "run_train", fake_run_train)
    return seen


def _train(tmp_path, config_text, suffix, *flags):
    path = tmp_path / f"settings{suffix}"
    path.write_text(config_text, encoding="utf-8")
    args = ["cache.h5", "--annotations", "a.json", "--output", "run", "--config", str(path), *flags]
    return CliRunner().invoke(train_main, args), path


@pytest.mark.parametrize("suffix, text", [
    (".json", json.dumps({"epochs": 5, "lr": 1e-4, "seed": 7, "resume": True, "pooling": "temporal"})),
    (".toml", 'epochs = 5\nlr = 1e-4\nseed = 7\nresume = true\npooling = "temporal"\n'),
])
def test_command_line_beats_config_file_beats_defaults(tmp_path, captured, suffix, text):
    result, _ = _train(tmp_path, text, suffix, "--epochs", "3", "--pooling", "both")
    assert result.exit_code == 0, result.output
    cfg = captured[-1]
    assert cfg.epochs == 3  # typed, even though it equals the default, beats the file's 5
    assert cfg.pooling == "both"  # typed beats the file's alias
    assert (cfg.lr, cfg.seed, cfg.resume) == (1e-4, 7, True)  # from the file
    assert (cfg.batch_size, cfg.grad_accum, cfg.strict, cfg.save_every) == (32, 1, False, 500)  # defaults
    assert (cfg.cache, cfg.annotations, cfg.output) == ("cache.h5", "a.json", "run")


def test_without_a_config_file_the_dataclass_defaults_apply(captured):
    result = CliRunner().invoke(train_main, ["c.h5", "--annotations", "a.json", "--output", "run"])
    assert result.exit_code == 0, result.output
    assert captured[-1] == TrainConfig(cache="c.h5", annotations="a.json", output="run")


@pytest.mark.parametrize("suffix, text", [(".json", '{"epochs": 2, "epoch": 3}'), (".toml", "epochs = 2\nepoch = 3\n")])
def test_unknown_key_in_a_config_file_is_one_line(tmp_path, captured, suffix, text):
    result, path = _train(tmp_path, text, suffix)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and "epoch" in lines[0] and lines[0].startswith("error: ")
    assert not captured


@pytest.mark.parametrize("given, expected", [(None, "auto"), ("auto", "auto"), ("3", 3)])
def test_decode_workers_takes_auto_or_a_number(monkeypatch, given, expected):
    seen = []
    import redvillm.extract.pipeline

    def fake_run_extract(cfg, *args):
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(redvillm.extract.pipeline, "run_extract", fake_run_extract)
    flags = [] if given is None else ["--decode-workers", given]
    result = CliRunner().invoke(extract_main, ["videos", "out.h5", *flags])
    assert result.exit_code == 0, result.output
    assert seen[-1].decode_workers == expected


@pytest.mark.parametrize("given", ["many", "0", "-2"])
def test_decode_workers_refuses_other_words_and_numbers_below_one(monkeypatch, given):
    import redvillm.extract.pipeline

    monkeypatch.setattr(redvillm.extract.pipeline, "run_extract", lambda *a, **k: pytest.fail("ran"))
    result = CliRunner().invoke(extract_main, ["videos", "out.h5", "--decode-workers", given])
    assert result.exit_code == 2 and "decode" in result.output.lower(), result.output


@dataclasses.dataclass
class _Sized:
    size: int = 224
    depth: int = 2
    tasks: tuple[str, ...] = ("order", "direction")


@click.command()
@options_from(_Sized, only=("size", "tasks"))
@click.pass_context
def _sized(ctx, config_file, **flags):
    click.echo(repr(config_from(ctx, _Sized, config_file, **flags)))


def test_only_keeps_the_named_fields_and_a_config_file_still_sets_the_others(tmp_path):
    assert [p.name for p in _sized.params] == ["size", "tasks", "config_file"]
    assert CliRunner().invoke(_sized, ["--depth", "3"]).exit_code == 2
    path = tmp_path / "settings.json"
    path.write_text('{"depth": 3}')
    result = CliRunner().invoke(_sized, ["--size", "64", "--config", str(path)])
    assert result.output.strip() == repr(_Sized(size=64, depth=3))


def test_a_word_tuple_is_one_comma_separated_flag():
    assert CliRunner().invoke(_sized, []).output.strip() == repr(_Sized())  # the default round-trips
    result = CliRunner().invoke(_sized, ["--tasks", "count, colour,"])
    assert result.output.strip() == repr(_Sized(tasks=("count", "colour")))
    assert "--tasks TEXT,..." in CliRunner().invoke(_sized, ["--help"]).output


@pytest.mark.parametrize("name", COMMANDS)
def test_an_unknown_flag_is_one_line_naming_help(name):
    command = COMMANDS[name][0]
    result = CliRunner().invoke(command, ["--no-such-flag"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No such option") and "--help)" in lines[0], lines
