"""What every tiny replica (data/tiny_<family>.py) shares: seeded building, the re-initialisation
that keeps a tiny random model learnable, writing the recipe, and the command line.

A replica module keeps only its in-code configs (tokenizer, processor, model config) and what is
specific to its architecture; everything is a function of its config dataclass, seed included,
so building twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
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


def write_recipe(out_dir: Path, recipe_file: str, cfg, **extra) -> None:
    """The config the replica was built from, beside the weights (HF loaders ignore it)."""
    recipe = {**asdict(cfg), **extra, "transformers_version": transformers.__version__}
    (out_dir / recipe_file).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")


def main_for(build: Callable, config_class, description: str, options: dict[str, dict],
             argv: list[str] | None = None) -> None:
    """`python -m redvillm.data.tiny_<family> OUT_DIR [--option value ...]`: build, then list the files.

    options: config field -> argparse keywords (its default is the config's); --seed is always there.
    """
    module = build.__module__.removeprefix("redvillm.data.")
    parser = argparse.ArgumentParser(prog=f"python -m redvillm.data.{module}", description=description)
    parser.add_argument("out_dir", type=Path)
    defaults = {f.name: f.default for f in fields(config_class)}
    for name, keywords in {**options, "seed": {"type": int}}.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=defaults[name], **keywords)
    args = vars(parser.parse_args(argv))
    out_dir = build(args.pop("out_dir"), config_class(**args))
    for path in sorted(out_dir.iterdir()):
        print(f"{path.stat().st_size:>10}  {path}")
