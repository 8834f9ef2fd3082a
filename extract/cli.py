"""`redvillm-extract VIDEOS OUT.h5`: a thin click layer over ``run_extract``."""

from __future__ import annotations

import sys
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from redvillm.cache import shards_dir
from redvillm.cli import config_from, friendly_errors, quiet_libraries
from redvillm.extract.config import DEFAULT_MODEL, ExtractConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("videos", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--model", default=DEFAULT_MODEL, help="Hub id or local checkpoint directory of the image LLM.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--num-frames", default=100, help="T: frames sampled uniformly from each video.")
@click.option("--image-size", type=int, default=None,
              help="Square frame size, for vision towers that take any resolution (default: the family's own); "
                   "fixed-resolution towers refuse it and use their processor's size (README: Backbones).")
@click.option("--sampling", type=click.Choice(["uniform", "videochatgpt"]), default="uniform",
              help="Frame index rule; videochatgpt reproduces Video-ChatGPT's extractor.")
@click.option("--short-videos", type=click.Choice(["repeat", "keep"]), default="repeat",
              help="Videos with fewer than T frames: repeat frames up to T, or keep fewer rows.")
@click.option("--batch-size", default=32, help="Frames per vision-encoder forward.")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              help="Encoder compute dtype (auto: float16/bfloat16 on CUDA, float32 on CPU).")
@click.option("--decode-workers", default=2, help="Decoder processes running ahead of the encoder.")
@click.option("--threads", type=int, default=None,
              help="Encoder torch threads on CPU (default: the cores the decoders leave).")
@click.option("--decode-timeout", default=120.0, help="Seconds a video may take to decode before it is skipped.")
@click.option("--recycle-after", default=100, help="Replace a decoder process after this many videos.")
@click.option("--shard-size", default="2GB", help="Close a shard once it holds this much.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT made with other settings.")
@click.option("--strict", is_flag=True, help="Exit with code 1 if any video failed.")
@click.option("--retry-failed", is_flag=True, help="Retry earlier failures even if the file is unchanged.")
@click.option("--num-shards", type=int, default=None, help="Manual scale-out without torchrun: total parts.")
@click.option("--shard-index", type=int, default=None, help="Manual scale-out: this process's part.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON/TOML file of settings; flags on the command line win.")
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, **flags) -> None:
    """Cache the frozen vision encoder's frame tokens of every video in VIDEOS to OUTPUT (HDF5).

    VIDEOS is a folder (searched recursively) or a .txt/.json list of paths. Rerunning the same
    command resumes; under torchrun each rank takes its own part of the videos.
    """
    quiet_libraries()
    cfg = config_from(ctx, ExtractConfig, config_file, **flags)
    from redvillm.extract.pipeline import run_extract  # heavy imports after argument checks

    console = Console(stderr=True)
    with _progress(console) as (progress, callback):
        summary = run_extract(cfg, callback)
    _print_summary(console, summary)
    if cfg.strict and summary.failures:
        sys.exit(1)


class _progress:
    """rich progress: videos/s, frames/s, failures so far, ETA."""

    def __init__(self, console: Console):
        self.bar = Progress(
            TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("[red]{task.fields[failed]} failed"),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self.task = None
        self.started = time.perf_counter()

    def __enter__(self):
        self.bar.__enter__()
        return self.bar, self.update

    def update(self, event) -> None:
        if self.task is None:
            self.task = self.bar.add_task("extract", total=event.total, rate="", failed=0)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        rate = f"{event.done / seconds:.2f} videos/s {event.frames / seconds:.1f} frames/s"
        self.bar.update(self.task, completed=event.done, rate=rate, failed=event.failed)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


def _print_summary(console: Console, summary) -> None:
    table = Table(title=f"redvillm-extract -> {summary.index}", show_header=False)
    rows = [
        ("videos found", summary.found),
        ("already cached (skipped)", summary.already_cached),
        ("earlier failures, file unchanged (skipped)", summary.skipped_failures),
        ("extracted now", summary.extracted),
        ("failed now", len(summary.failures)),
        ("frames encoded", summary.frames),
        ("seconds", f"{summary.seconds:.1f}"),
        ("videos in the cache", summary.cached_total if summary.rank == 0 else "(written by rank 0)"),
        ("tokens per video (T, N, D)", f"{summary.token_shape} float16"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    console.print(f"read it with: from redvillm import open_cache; cache = open_cache({str(summary.index)!r})",
                  highlight=False)
    for failure in summary.failures[:20]:
        console.print(f"[red]failed[/red] {failure.path}: {failure.reason}", highlight=False)
    if len(summary.failures) > 20:
        console.print(f"... and {len(summary.failures) - 20} more; see the failures-r*.jsonl files")
    if summary.failures:
        manifest = shards_dir(summary.index) / "failures-r*.jsonl"
        console.print(f"failures manifest (path, reason): {manifest}", highlight=False)
