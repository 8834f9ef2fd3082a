"""Pick a family adapter from the checkpoint's own config.model_type (never from its name)."""

from __future__ import annotations

from transformers import AutoConfig

from redvillm.errors import UserError
from redvillm.families.base import Family

SUPPORTED = {"llava": "LLaVA (LlavaForConditionalGeneration)"}


def load_family(model: str, revision: str | None = None) -> Family:
    """The adapter for the checkpoint at `model` (hub id or local directory)."""
    try:
        config = AutoConfig.from_pretrained(model, revision=revision)
    except (OSError, ValueError) as err:
        raise UserError(
            f"{model}: cannot load its config.json ({_first_line(err)}); pass a local checkpoint "
            "directory, or a hub id that is in the local cache when offline"
        ) from None
    model_type = getattr(config, "model_type", None)
    if model_type == "llava":
        from redvillm.families.llava import LlavaFamily

        return LlavaFamily(model, config, revision)
    supported = ", ".join(SUPPORTED)
    raise UserError(f"{model}: model_type {model_type!r} is not supported yet (supported: {supported})")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
