"""`python -m redvillm.experiments.sanity | .miniature OUT_DIR [flags]`: thin click commands over
``run_sanity`` and ``run_miniature``; every flag is a field of SanityConfig / MiniatureConfig."""

from __future__ import annotations

from pathlib import Path

import click

from redvillm.cli import command, config_from, friendly_errors, options_from, quiet_libraries
from redvillm.experiments.config import MiniatureConfig, SanityConfig

@command()
@options_from(SanityConfig, positional=("out_dir",))
@click.pass_context
@friendly_errors
def sanity(ctx: click.Context, config_file: str | None, **flags) -> None:
    """The temporal sanity benchmark: train with pooling both and time-averaged on synthetic videos of
    one temporal task (random-weight tiny LLaVA) and compare held-out forced-choice accuracy.
    Everything lands in OUT_DIR; the table is OUT_DIR/results.md."""
    cfg = config_from(ctx, SanityConfig, config_file, **flags)
    quiet_libraries()
    from redvillm.experiments.sanity import run_sanity

    result = run_sanity(cfg)
    click.echo((Path(cfg.out_dir) / "results.md").read_text())
    click.echo(f"{result.seconds:.0f} s")


@command()
@options_from(MiniatureConfig, positional=("out_dir",))
@click.pass_context
@friendly_errors
def miniature(ctx: click.Context, config_file: str | None, **flags) -> None:
    """The paper in miniature: Tables 3-5 of RED-VILLM on our own tiny image LLM and synthetic videos
    (one run per configuration and seed, held-out forced-choice accuracy per task). Everything lands
    in OUT_DIR, a rerun reuses finished runs; the tables are OUT_DIR/results.md."""
    cfg = config_from(ctx, MiniatureConfig, config_file, **flags)
    quiet_libraries()
    from redvillm.experiments.miniature import run_miniature

    run_miniature(cfg)
    click.echo((Path(cfg.out_dir) / "results.md").read_text())
