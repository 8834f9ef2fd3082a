"""``setting()``: a config dataclass field that carries its own --help text (the CLIs read it; no click here)."""

from __future__ import annotations

from dataclasses import MISSING, field


def setting(default=MISSING, help: str | None = None, *, path: bool = False, parse=None):
    """A field with `default` (none: the setting is required), its --help text, and whether it names a path.

    `parse`: the setting is typed as text (on the command line or in a config file) and `parse(text)`
    makes its value, raising ValueError for bad text; `default` is then that text as a user would
    type it (shown by --help), and the field's default is what it parses to.
    """
    metadata: dict = {"path": True} if path else {}
    if help:
        metadata["help"] = help
    if parse is not None:
        metadata.update(parse=parse, text=default)
        if default is not MISSING:
            default = parse(default)
    return field(default=default, metadata=metadata)
