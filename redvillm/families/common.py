"""What family adapters share, as free functions: loading the frozen LLM without its tower,
loading the tower alone, mean pooling, the one-image user message."""

from __future__ import annotations

import importlib.util
import json
import logging

import torch
from safetensors import safe_open
from transformers import AutoProcessor
from transformers.utils import cached_file

from redvillm.errors import UserError
from redvillm.chat import QUESTION_SLOT, ChatFormat

log = logging.getLogger(__name__)


def load_submodule_state(model: str, prefixes: tuple[str, ...], revision: str | None = None) -> dict:
    """The tensors of one sub-module of a checkpoint, without reading the rest.

    A 7B image LLM is ~14 GB, its vision tower ~0.6 GB: stage one only needs the latter. The
    first prefix that matches any key wins (checkpoints written by older transformers versions
    put `vision_tower.` at the root, newer ones under `model.`); the prefix is stripped.
    Returns {} when no key matches, so the caller can fall back to a full from_pretrained.
    """
    files = _weight_files(model, revision)
    for prefix in prefixes:
        wanted = {}
        for path in files:
            with safe_open(path, framework="pt") as f:
                keys = [k for k in f.keys() if k.startswith(prefix)]
                for key in keys:
                    wanted[key[len(prefix):]] = f.get_tensor(key)
        if wanted:
            return wanted
    return {}


def _weight_files(model: str, revision: str | None) -> list[str]:
    kwargs = dict(revision=revision, _raise_exceptions_for_missing_entries=False)
    index = cached_file(model, "model.safetensors.index.json", **kwargs)
    if index is not None:
        with open(index, encoding="utf-8") as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [cached_file(model, name, revision=revision) for name in names]
    single = cached_file(model, "model.safetensors", **kwargs)
    if single is None:
        raise UserError(f"{model}: no safetensors weights found (model.safetensors or its index); "
                        "redvillm loads safetensors only: convert the checkpoint with save_pretrained")
    return [single]


def strip_prefix(state: dict, prefix: str) -> dict:
    """The state with `prefix` removed from every key that has it."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, no gradients: the frozen parts of the video LLM."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def positive_layer_index(index: int, num_layers: int) -> int:
    """hidden_states has num_layers + 1 entries (embeddings first); map -2 etc. into it."""
    position = index % (num_layers + 1) if index < 0 else index
    if not 0 <= position <= num_layers:
        raise ValueError(f"vision feature layer {index} is outside a {num_layers}-layer encoder")
    return position


# ------------------------------------------------------------------ what most adapters share

def load_frozen_backbone(model_class, model: str, revision: str | None, device: torch.device, dtype: torch.dtype,
                         drop: tuple[str, ...]) -> torch.nn.Module:
    """The image LLM from from_pretrained, frozen, with the dotted sub-modules in `drop` set to None.

    Stage two and inference never run the vision tower (video tokens come from the cache), so
    its weights are dropped. On CUDA the weights go straight to the GPU when accelerate is
    installed: no host copy of a 14 GB LLM.
    """
    placement = {}
    if device.type == "cuda" and importlib.util.find_spec("accelerate") is not None:
        placement = {"device_map": {"": str(device)}}
    backbone = model_class.from_pretrained(model, revision=revision, dtype=dtype, **placement)
    for path in drop:
        parent, _, name = path.rpartition(".")
        setattr(attribute(backbone, parent), name, None)
    return freeze(backbone.to(device))


def load_tower(tower: torch.nn.Module, model: str, revision: str | None, prefixes: tuple[str, ...], model_class,
               path: str, skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """`tower` (built from the vision config) with only the checkpoint's tensors under `prefixes`.

    Checkpoints saved by transformers 4 nest CLIP/SigLIP weights under "vision_model." once
    more (transformers 5 drops it when it loads them): so do we. Keys starting with `skip` are
    parts the tower was built without (e.g. SigLIP's unused pooling head). When the keys still
    differ, the whole model is loaded with from_pretrained and its sub-module `path` returned.
    """
    state = load_submodule_state(model, prefixes, revision)
    if state:
        for candidate in (state, strip_prefix(state, "vision_model.")):
            candidate = {k: v for k, v in candidate.items() if not k.startswith(skip)}
            missing, unexpected = tower.load_state_dict(candidate, strict=False)
            if not missing and not unexpected:
                return tower
        log.info("vision tower keys differ from the checkpoint's (%d missing, %d unexpected); "
                 "loading the whole model with from_pretrained instead", len(missing), len(unexpected))
    return attribute(model_class.from_pretrained(model, revision=revision), path)


def attribute(module, path: str):
    """module.a.b for path "a.b" ("" is the module itself)."""
    for name in filter(None, path.split(".")):
        module = getattr(module, name)
    return module


def mean_pool(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, N', D') -> temporal tokens (T, D') (mean over tokens), spatial tokens (N', D') (mean over time).

    N' and D' are the token units the projector takes (patches, or merge groups of patches).
    """
    tokens = tokens.float()
    return tokens.mean(dim=1), tokens.mean(dim=0)


def one_image_messages() -> list[dict]:
    """The user turn the video stands in for: one image, then the question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION_SLOT}]}]


def processor_chat_format(model: str, revision: str | None, image_token_id: int) -> ChatFormat:
    """The chat format of a checkpoint whose AutoProcessor loads (its tokenizer and template)."""
    processor = AutoProcessor.from_pretrained(model, revision=revision)
    return ChatFormat(processor.tokenizer, processor.apply_chat_template, one_image_messages(), image_token_id)
