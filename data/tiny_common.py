"""What every tiny replica (data/tiny_<family>.py) shares: seeded building, the re-initialisation
that keeps a tiny random model learnable, writing the recipe, and what its command line offers
(ReplicaCLI; redvillm.data.cli makes the one click command of it for every family).

A replica module keeps only its in-code configs (tokenizer, processor, model config) and what is
specific to its architecture; everything is a function of its config dataclass, seed included,
so building twice gives byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import transformers
from transformers import GenerationConfig


@torch.no_grad()
def reinit_linear_and_embeddings(parts, std: float) -> None:
    """N(0, std) weights and zero biases for every Linear and Embedding in `parts`.

    HF's 0.02 init leaves a tiny random LLM so flat that nothing trained through it learns
    (docs/tiny-models.md); 1/sqrt(width) does not.
    """
    for part in parts:
        for module in part.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0.0, std)
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.zero_()


def build_seeded(model_class, config, seed: int, reinit: Callable[[torch.nn.Module], None]) -> torch.nn.Module:
    """model_class(config) in float32 eval mode, HF's init and then `reinit` drawn from a generator seeded
    with `seed`, the caller's global generator state left as it was; a generation config of the
    text model's special ids."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).to(torch.float32).eval()
        reinit(model)
    text = config.text_config
    ids = {name: getattr(text, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    model.generation_config = GenerationConfig(**{k: v for k, v in ids.items() if v is not None})
    return model


def save_replica(out_dir: str | Path, parts, recipe_file: str, cfg, **recipe_extra) -> Path:
    """Each of `parts` (model, tokenizer, processors) save_pretrained to out_dir, then the recipe: the
    config the replica was built from, beside the weights (HF loaders ignore it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for part in parts:
        part.save_pretrained(out_dir)
    recipe = {**asdict(cfg), **recipe_extra, "transformers_version": transformers.__version__}
    (out_dir / recipe_file).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    return out_dir


@dataclass(frozen=True)
class ReplicaCLI:
    """`python -m redvillm.data.tiny_<family> OUT_DIR [--seed N] [--<flag> value ...]`: build, then list the files.

    Plain data, no click: the family modules are library code; redvillm.data.cli.replica_command
    turns this into the command."""

    build: Callable  # (out_dir, config) -> the folder written
    config: type  # the family's config dataclass: its defaults are the flags' defaults
    description: str
    flags: tuple[str, ...] = ()  # config fields offered as flags besides seed
