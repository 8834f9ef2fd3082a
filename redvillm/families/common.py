"""Helpers every family shares: loading part of a checkpoint, freezing, the family registry."""

from __future__ import annotations

import json
import logging

import torch
from safetensors import safe_open
from transformers.utils import cached_file

from redvillm.errors import UserError

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
