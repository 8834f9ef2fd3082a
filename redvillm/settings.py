"""``setting()``: a config dataclass field that carries its own --help text (the CLIs read it; no click here)."""

from __future__ import annotations

from dataclasses import MISSING, field


def setting(default=MISSING, help: str | None = None, *, path: bool = False):
    """A field with `default` (none: the setting is required), its --help text, and whether it names a path."""
    metadata: dict = {"path": True} if path else {}
    if help:
        metadata["help"] = help
    return field(default=default, metadata=metadata)
