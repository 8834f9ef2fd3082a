"""Pick a family adapter from the checkpoint's own config.model_type (never from its name)."""

from __future__ import annotations

import importlib
from pathlib import Path

from transformers import AutoConfig

from redvillm.errors import UserError
from redvillm.families.base import Family

# model_type -> (adapter module, class, what users know it as). Imported on demand.
FAMILIES: dict[str, tuple[str, str, str]] = {
    "llava": ("redvillm.families.llava", "LlavaFamily", "LLaVA (LlavaForConditionalGeneration)"),
    "qwen2_vl": ("redvillm.families.qwen2_vl", "Qwen2VLFamily", "Qwen2-VL (Qwen2VLForConditionalGeneration)"),
    "qwen2_5_vl": ("redvillm.families.qwen2_vl", "Qwen2VLFamily", "Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration)"),
    "deepseek_vl": ("redvillm.families.deepseek_vl", "DeepseekVLFamily", "DeepSeek-VL (DeepseekVLForConditionalGeneration)"),
    "deepseek_vl_hybrid": ("redvillm.families.deepseek_vl_hybrid", "DeepseekVLHybridFamily", "DeepSeek-VL 7B (DeepseekVLHybridForConditionalGeneration)"),
    "internvl": ("redvillm.families.internvl", "InternVLFamily", "InternVL3 (InternVLForConditionalGeneration)"),
    "llava_onevision": ("redvillm.families.llava_onevision", "LlavaOnevisionFamily", "LLaVA-OneVision (LlavaOnevisionForConditionalGeneration)"),

    "gemma3": ("redvillm.families.gemma3", "Gemma3Family", "Gemma 3 (Gemma3ForConditionalGeneration)"),
}


def load_family(model: str, revision: str | None = None, image_size: int | None = None) -> Family:
    """The adapter for the checkpoint at `model` (hub id or local directory).

    image_size: the square frame size for families whose vision tower takes any resolution
    (Qwen2-VL); None takes the family's default. Fixed-resolution families refuse it.
    """
    config = _read_config(model, revision)
    family_class = _family_class(config.model_type)
    if image_size is not None and not family_class.takes_image_size:
        free = [known for model_type, (_, _, known) in FAMILIES.items() if _family_class(model_type).takes_image_size]
        raise UserError(f"{model}: {FAMILIES[config.model_type][2]} frames take its image processor's own size; "
                        f"drop --image-size (it is for vision towers of any resolution: {', '.join(free)})")
    return family_class(model, config, revision, image_size)


def _family_class(model_type: str) -> type[Family]:
    module, name, _ = FAMILIES[model_type]
    return getattr(importlib.import_module(module), name)


def family_for_cache(model: str, revision: str | None, cache_info: dict) -> Family:
    """The adapter as stage one used it for a cache (same frame size, so the same provenance).

    A cache of another family keeps no say over the frame size: the caller's provenance check
    then refuses it for what it is, a cache of another model.
    """
    same_family = _read_config(model, revision).model_type == cache_info.get("family")
    return load_family(model, revision, cache_info.get("vision", {}).get("image_size") if same_family else None)


def _read_config(model: str, revision: str | None):
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
        raise UserError(f"{model}: directory does not exist; pass an existing checkpoint directory or a hub id "
                        "such as llava-hf/llava-1.5-7b-hf")
    try:
        config = AutoConfig.from_pretrained(model, revision=revision)
    except (OSError, ValueError) as err:
        raise UserError(
            f"{model}: cannot load its config.json ({_first_line(err)}); pass a local checkpoint "
            "directory, or a hub id that is in the local cache when offline"
        ) from None
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        supported = ", ".join(FAMILIES)
        raise UserError(f"{model}: model_type {model_type!r} is not supported yet (supported: {supported})")
    return config


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
