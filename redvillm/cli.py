"""What the three console scripts share: config precedence, one-line errors, logging quietness.

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
from pathlib import Path

import click
from click.core import ParameterSource

from redvillm.errors import UserError


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
