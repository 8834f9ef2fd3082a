"""What the console scripts share: options made from a config dataclass, config precedence,
one-line errors, logging quietness.

The typed config is the CLI: `options_from(Config)` makes one click option per dataclass field.
The field's name gives the flag (underscores become dashes), its type the click type (bool: a
flag, `--name/--no-name` when it defaults to True; Literal: a choice; int, float, str;
`tuple[str, ...]`: one comma-separated word list, "order,direction"; `X | None` is optional X), its
default the default (no default: required). Its metadata may add `help` (the --help text) and
`path: True` (shown as PATH). `only` keeps the flags to the fields it names (the others keep their
defaults, and a --config file may still set them). Every command also gets `--config FILE`.

Precedence: dataclass defaults, then an optional --config file (JSON or TOML), then the flags
given on the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import types
import typing
from pathlib import Path

import click
from click.core import ParameterSource

from redvillm.errors import UserError


CONFIG_HELP = "JSON/TOML file of settings; flags on the command line win."
# Every command: -h as well as --help, and the defaults shown in --help.
COMMAND_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}


def options_from(cls, positional: tuple[str, ...] = (), only: tuple[str, ...] | None = None):
    """Decorator: click arguments (the `positional` fields) and options (the rest, or those in `only`) for
    `cls`, plus --config."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only and f.name not in positional:
            continue
        kind = _click_type(f, hints[f.name])
        params.append(click.argument(f.name, type=kind) if f.name in positional else _option(f, kind))
    params.append(click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                               default=None, help=CONFIG_HELP))

    def decorate(fn):
        for param in reversed(params):
            fn = param(fn)
        return fn

    return decorate


def _option(f: dataclasses.Field, kind):
    flag = "--" + f.name.replace("_", "-")
    extra = {"help": f.metadata.get("help")}
    if f.default is dataclasses.MISSING:
        return click.option(flag, f.name, type=kind, required=True, **extra)
    if kind is click.BOOL:
        if f.default:
            return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=True, **extra)
        return click.option(flag, f.name, is_flag=True, default=False, **extra)
    if isinstance(kind, WordList):
        return click.option(flag, f.name, type=kind, default=",".join(f.default), **extra)
    return click.option(flag, f.name, type=kind, default=f.default, **extra)


class WordList(click.ParamType):
    """A `tuple[str, ...]` setting on the command line: comma-separated words ("order,direction")."""

    name = "a,b,..."

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return tuple(value)
        return tuple(word.strip() for word in value.split(",") if word.strip())


def _click_type(f: dataclasses.Field, hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return click.Choice([str(choice) for choice in typing.get_args(hint)])
    if f.metadata.get("path"):
        return click.Path()
    if hint == tuple[str, ...]:
        return WordList()
    known = {bool: click.BOOL, int: click.INT, float: click.FLOAT, str: click.STRING}
    if hint not in known:
        raise TypeError(f"{f.name}: no click type for {hint!r}")
    return known[hint]


def config_from(ctx: click.Context, cls, config_file: str | None, **flags):
    """Build `cls` from defaults <- config file <- flags the user actually typed."""
    values = _read_config_file(config_file) if config_file else {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{config_file}: unknown setting(s) {', '.join(unknown)}")
    for name, value in flags.items():
        source = ctx.get_parameter_source(name)
        if name not in values or source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None


def _read_config_file(path: str) -> dict:
    text = Path(path).read_text(encoding="utf-8")
    try:
        if path.endswith(".toml"):
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except ValueError as err:
        raise UserError(f"{path}: cannot parse config file ({err})") from None


def friendly_errors(fn):
    """UserError -> one red line on stderr and exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def quiet_libraries() -> None:
    """Keep transformers' advisory warnings out of the progress display."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
