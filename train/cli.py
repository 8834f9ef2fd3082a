"""`redvillm-train CACHE.h5 --annotations FILE --model ID --output DIR`: a thin layer over ``run_train``."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from redvillm.cli import command, config_from, friendly_errors, options_from, quiet_libraries
from redvillm.train.config import TrainConfig


@command()
@options_from(TrainConfig, positional=("cache",))
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, **flags) -> None:
    """Train the projector and the temporal module on CACHE (from redvillm-extract); LLM and ViT stay frozen."""
    quiet_libraries()
    from redvillm.train.loop import run_train

    cfg = config_from(ctx, TrainConfig, config_file, **flags)
    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                   TimeRemainingColumn(), console=console)
    task = {}

    def announce(plan) -> None:
        from redvillm.model_io import SKIPPED_FILE  # torch is loaded by now; the CLI's start-up stays light

        console.print(f"trainable parameters: {plan.trainable_parameters:,} (projector + temporal module); "
                      f"{plan.instructions} instructions on {plan.videos} videos; micro-batch {plan.micro_batch} x "
                      f"grad-accum {cfg.grad_accum} x world {plan.world_size} = {cfg.batch_size}", highlight=False)
        if plan.skipped_rows:
            console.print(f"[yellow]skipped {plan.skipped_rows} rows whose video is not in the cache "
                          f"(first: {', '.join(plan.skipped_examples)})")
        if plan.bad_videos:
            console.print(f"[yellow]skipped {len(plan.bad_videos)} videos with unusable tokens (listed in "
                          f"{cfg.output}/{SKIPPED_FILE}; first: {plan.bad_videos[0]})", highlight=False)
        for rows, what in ((plan.long_rows.skipped, "left out: the prompt and video tokens alone exceed"),
                           (plan.long_rows.truncated, "answer cut to fit")):
            if rows:
                console.print(f"[yellow]{len(rows)} rows {what} the backbone's context of {plan.context} tokens "
                              f"(listed in {cfg.output}/{SKIPPED_FILE}; first: {cfg.annotations}: {rows[0]['where']})",
                              highlight=False)
        task["id"] = bar.add_task("train", total=plan.total_steps, completed=plan.start_step, status="")

    def progress(event) -> None:
        status = f"loss {event.loss:.4f} lr {event.lr:.2e} {event.samples_per_s:.1f} samples/s epoch {event.epoch}"
        bar.update(task["id"], completed=event.step, status=status)

    with bar:
        summary = run_train(cfg, progress, announce)
    table = Table(title=f"redvillm-train -> {summary.output}", show_header=False)
    for name, value in [("optimizer steps", summary.steps),
                        ("loss, first step", _fmt(summary.first_loss)), ("loss, last step", _fmt(summary.last_loss)),
                        ("videos skipped (unusable tokens)", summary.skipped_videos),
                        ("rows left out (longer than the context)", summary.rows_too_long),
                        ("answers cut to the context", summary.answers_cut),
                        ("seconds", f"{summary.seconds:.1f}"),
                        ("load it with", f"from redvillm import load_model; model = load_model({str(summary.output)!r})")]:
        table.add_row(name, str(value))
    console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
