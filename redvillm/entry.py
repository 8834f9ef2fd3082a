"""The console scripts: check the cli extra is installed, then run the click command.

Without this wrapper a core-only install would answer ``redvillm-train`` with a traceback
ending in ``ModuleNotFoundError: click``; with it, one line naming the extra, exit code 2.
"""

from __future__ import annotations

import importlib
import sys

from redvillm.errors import UserError
from redvillm.extras import require


def _run(command: str, module: str) -> None:
    try:
        require("click", "rich", purpose=command)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    importlib.import_module(module).main()


def extract() -> None:
    # decord is checked where videos are decoded (DecodePool): converting a raw cache needs none.
    _run("redvillm-extract", "redvillm.extract.cli")


def train() -> None:
    _run("redvillm-train", "redvillm.train.cli")


def evaluate() -> None:
    _run("redvillm-eval", "redvillm.evaluate.cli")


def serve() -> None:
    _run("redvillm-serve", "redvillm.serve.cli")
