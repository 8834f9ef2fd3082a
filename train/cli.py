"""`redvillm-train CACHE.h5 --annotations FILE --model ID --output DIR`: a thin layer over ``run_train``."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from redvillm.cli import config_from, friendly_errors, quiet_libraries
from redvillm.extract.config import DEFAULT_MODEL
from redvillm.pooling import POOLING_ALIASES, POOLINGS


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("cache", type=click.Path())
@click.option("--annotations", required=True, type=click.Path(), help="VideoInstruct JSON, conversation JSON or JSONL.")
@click.option("--model", default=DEFAULT_MODEL, help="The image LLM the cache was extracted with.")
@click.option("--revision", default=None, help="Hub revision of --model.")
@click.option("--output", required=True, type=click.Path(), help="Run directory (adapter, config, log, checkpoints).")
@click.option("--pooling", type=click.Choice([*POOLINGS, *POOLING_ALIASES]), default="both",
              help="both = [temporal tokens, spatial tokens]; time-averaged = the spatial tokens (mean over frames) "
                   "only; frame-averaged = the temporal tokens (mean over patches) only. The paper's names are "
                   "kept as aliases: temporal = time-averaged, spatial = frame-averaged.")
@click.option("--temporal-module", type=click.Choice(["copy", "none", "copy+mlp", "random"]), default="copy",
              help="copy of the pretrained projector; none = one projector for both (Video-ChatGPT); "
                   "copy+mlp = copy + random MLP; random = projector architecture, random init.")
@click.option("--lr", default=2e-5, help="Peak learning rate (AdamW).")
@click.option("--epochs", default=3)
@click.option("--batch-size", default=32, help="Global batch: micro-batch x grad-accum x world size.")
@click.option("--grad-accum", default=1)
@click.option("--warmup-ratio", default=0.03)
@click.option("--weight-decay", default=0.0)
@click.option("--max-grad-norm", default=1.0, help="Gradient clipping (0 disables).")
@click.option("--max-steps", type=int, default=None, help="Stop (and schedule) after this many optimizer steps.")
@click.option("--seed", default=0)
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              help="Frozen LLM dtype (auto: bf16/fp16 on CUDA, fp32 on CPU); trainable weights stay fp32.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute the frozen LLM's activations in backward.")
@click.option("--save-every", default=500, help="Optimizer steps between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --output (if any); "
              "a finished run is left as it is.")
@click.option("--overwrite", is_flag=True, help="Delete an existing run in --output first.")
@click.option("--strict", is_flag=True, help="Annotation rows whose video is not cached, or whose video's tokens "
              "are unusable (unreadable, NaN/inf), are an error instead of being skipped with a count.")
@click.option("--num-workers", default=2, help="DataLoader workers.")
@click.option("--pooled-dir", default=None, help="Where the pooled sidecar goes (default: CACHE.pooled/).")
@click.option("--log-every", default=10)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON/TOML file of settings; flags on the command line win.")
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, **flags) -> None:
    """Train the projector and the temporal module on CACHE (from redvillm-extract); LLM and ViT stay frozen."""
    quiet_libraries()
    from redvillm.train.config import TrainConfig
    from redvillm.train.loop import run_train

    cfg = config_from(ctx, TrainConfig, config_file, **flags)
    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                   TimeRemainingColumn(), console=console)
    task = {}

    def announce(plan) -> None:
        console.print(f"trainable parameters: {plan.trainable_parameters:,} (projector + temporal module); "
                      f"{plan.instructions} instructions on {plan.videos} videos; micro-batch {plan.micro_batch} x "
                      f"grad-accum {cfg.grad_accum} x world {plan.world_size} = {cfg.batch_size}", highlight=False)
        if plan.skipped_rows:
            console.print(f"[yellow]skipped {plan.skipped_rows} rows whose video is not in the cache "
                          f"(first: {', '.join(plan.skipped_examples)})")
        if plan.bad_videos:
            console.print(f"[yellow]skipped {len(plan.bad_videos)} videos with unusable tokens (listed in "
                          f"{cfg.output}/skipped.json; first: {plan.bad_videos[0]})", highlight=False)
        for rows, what in ((plan.long_rows.skipped, "left out: the prompt and video tokens alone exceed"),
                           (plan.long_rows.truncated, "answer cut to fit")):
            if rows:
                console.print(f"[yellow]{len(rows)} rows {what} the backbone's context of {plan.context} tokens "
                              f"(listed in {cfg.output}/skipped.json; first: {cfg.annotations}: {rows[0]['where']})",
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
