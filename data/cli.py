"""The data commands, `python -m redvillm.data.<module> OUT_DIR [flags]`: thin click layers over the
data library.

The data modules are library code (train/, bench/ and the tests import them), and library code
never imports click: each runnable data module ends in an `if __name__ == "__main__"` block that
hands over to its command here. Commands are made by functions that import their library module
only when called, so `python -m redvillm.data.synthetic` loads no torch. Flags come from the
config dataclasses (redvillm.cli.options_from), with --config FILE on every command but demo.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from redvillm.cli import command, config_from, friendly_errors, options_from

if TYPE_CHECKING:  # tiny_common loads torch, which the synthetic command does without
    from redvillm.data.tiny_common import ReplicaCLI

OUT_DIR = click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))


def config_command(cls, run: Callable[[Path, Any], None], description: str,
                   only: tuple[str, ...] | None = None) -> click.Command:
    """`OUT_DIR [flags of cls] [--config FILE]`: run(out_dir, the config) with one-line errors."""

    @command(help=description)
    @OUT_DIR
    @options_from(cls, only=only)
    @click.pass_context
    @friendly_errors
    def config_cli(ctx: click.Context, out_dir: Path, config_file: str | None, **flags) -> None:
        run(out_dir, config_from(ctx, cls, config_file, **flags))

    return config_cli


def replica_command(cli: ReplicaCLI) -> click.Command:
    """One family's `python -m redvillm.data.tiny_<family> OUT_DIR`: build the replica, list its files."""

    def build_and_list(out_dir: Path, cfg) -> None:
        for path in sorted(cli.build(out_dir, cfg).iterdir()):
            click.echo(f"{path.stat().st_size:>10}  {path}")

    return config_command(cli.config, build_and_list, cli.description, only=(*cli.flags, "seed"))


def synthetic_command() -> click.Command:
    from redvillm.data.synthetic import SyntheticConfig, generate

    def generate_and_summarise(out_dir: Path, cfg: SyntheticConfig) -> None:
        started = time.perf_counter()
        specs = generate(out_dir, cfg)
        per_task = ", ".join(f"{t}: {sum(s.task == t for s in specs)}" for t in cfg.tasks)
        click.echo(f"wrote {len(specs)} videos ({per_task}) to {out_dir} in {time.perf_counter() - started:.1f} s")

    return config_command(SyntheticConfig, generate_and_summarise,
                          "Write a synthetic temporal benchmark to OUT_DIR: mp4 videos, qa.json, labels.json.")


def image_llm_command() -> click.Command:
    from redvillm.data.tiny_image_llm import ImageLLMRecipe, train_image_llm

    def train_and_report(out_dir: Path, recipe: ImageLLMRecipe) -> None:
        click.echo(json.dumps(train_image_llm(out_dir, recipe), indent=2, ensure_ascii=False))

    return config_command(ImageLLMRecipe, train_and_report,
                          "Train the tiny image LLM on synthetic image QA; save it to OUT_DIR as a llava-hf "
                          "checkpoint.")


def demo_command() -> click.Command:
    @command()
    @OUT_DIR
    def demo(out_dir: Path) -> None:
        """The demo's inputs in OUT_DIR, made offline from fixed seeds: sample videos and two image LLMs."""
        from transformers.utils import logging as hf_logging

        from redvillm.data.demo import build_demo

        hf_logging.disable_progress_bar()
        started = time.perf_counter()
        videos, model = build_demo(out_dir)
        count = len(list(videos.glob("*.mp4")))
        click.echo(f"wrote {count} sample videos to {videos}, the tiny image LLM to {model} and a random-weight "
                   f"replica to {videos.parent / 'tiny-llava'} in {time.perf_counter() - started:.1f} s")

    return demo
