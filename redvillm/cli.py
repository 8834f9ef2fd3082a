"""What the console scripts share: options made from a config dataclass, config precedence,
one-line errors, logging quietness.

The typed config is the CLI: `options_from(Config)` makes one click option per dataclass field.
The field's name gives the flag (underscores become dashes), its type the click type (bool: a
flag, `--name/--no-name` when it defaults to True; Literal: a choice; int, float, str; `X | None`
is optional X; `int | Literal[...]`: a number or one of the words; `tuple[X, ...]`: X values
typed comma-separated, '' for none), its default the default (no default: required). Its metadata
may add `help` (the --help text), `path: True` (shown as PATH) and `parse` (the value is typed as
text and parsed: `setting(parse=...)`). `only` keeps the flags to the fields it names (the others
keep their defaults, and a --config file may still set them). Every command also gets `--config FILE`.

Precedence: dataclass defaults, then an optional --config file (JSON or TOML), then the flags
given on the command line. A file's list and parsed settings go through the same conversion as
the flags (a list or the comma-separated text; the text to parse).

`OneLineErrors` is the command class whose usage errors (an unknown flag, a bad value) are one
line and exit code 2, like the library's errors under `friendly_errors`.
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


def command(**kwargs):
    """`click.command` as every redvillm command is made: -h, defaults shown, one-line usage errors."""
    return click.command(cls=OneLineErrors, context_settings=COMMAND_SETTINGS, **kwargs)


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
    # Lists and parsed settings get their default as the user would type it (--help shows it so);
    # their click type converts it to the field's default.
    default = ",".join(map(str, f.default)) if isinstance(kind, CommaList) else f.metadata.get("text", f.default)
    return click.option(flag, f.name, type=kind, default=default, **extra)


class CommaList(click.ParamType):
    """A `tuple[X, ...]` setting: 'a,b,c' (spaces around items ignored, '' is the empty tuple) or a
    list (from a config file, or the field's default) -> a tuple of X."""

    def __init__(self, item: click.ParamType):
        self.item = item
        self.name = f"{item.name},..."

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        elif not isinstance(value, (list, tuple)):
            self.fail(f"expected a comma-separated list, got {value!r}", param, ctx)
        return tuple(self.item.convert(item, param, ctx) for item in value)


class Parsed(click.ParamType):
    """A setting typed as text that the field's `parse` turns into its value (ValueError: a usage error)."""

    name = "text"

    def __init__(self, parse):
        self.parse = parse

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value  # parsed already: the dataclass checks it
        try:
            return self.parse(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


class IntOrChoice(click.ParamType):
    """`int | Literal[...]`: a whole number or one of the words (e.g. `--decode-workers auto`)."""

    def __init__(self, words: tuple[str, ...]):
        self.words = words
        self.name = "|".join(("INTEGER", *words))

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value in self.words:
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number or one of {', '.join(self.words)}", param, ctx)


def _click_type(f: dataclasses.Field, hint):
    if f.metadata.get("parse"):
        return Parsed(f.metadata["parse"])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        literals = [arg for arg in args if typing.get_origin(arg) is typing.Literal]
        if int in args and literals:
            return IntOrChoice(tuple(str(w) for lit in literals for w in typing.get_args(lit)))
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        item, *rest = typing.get_args(hint)
        if rest != [Ellipsis]:
            raise TypeError(f"{f.name}: only tuple[X, ...] has a click type, not {hint!r}")
        return CommaList(_click_type(f, item))
    if typing.get_origin(hint) is typing.Literal:
        return click.Choice([str(choice) for choice in typing.get_args(hint)])
    if f.metadata.get("path"):
        return click.Path()
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
    _convert_file_values(ctx, values, config_file)
    for name, value in flags.items():
        source = ctx.get_parameter_source(name)
        if name not in values or source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None


def _convert_file_values(ctx: click.Context, values: dict, config_file: str | None) -> None:
    """A file's list and parsed settings, converted as the same text typed as a flag would be."""
    for param in ctx.command.params:
        if param.name in values and isinstance(param.type, (CommaList, Parsed)):
            try:
                values[param.name] = param.type.convert(values[param.name], param, ctx)
            except click.BadParameter as err:
                raise UserError(f"{config_file}: {param.name}: {err.message}") from None


def _read_config_file(path: str) -> dict:
    text = Path(path).read_text(encoding="utf-8")
    try:
        if path.endswith(".toml"):
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except ValueError as err:
        raise UserError(f"{path}: cannot parse config file ({err})") from None


class OneLineErrors(click.Command):
    """A click command whose usage errors (unknown flag, bad or missing value) are one line on stderr,
    exit code 2, naming --help instead of printing the usage."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:
            raise _OneLineUsageError(f"{err.format_message()} (see {info_name} --help)") from None


class _OneLineUsageError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.secho(f"error: {self.format_message()}", fg="red", err=True)


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
