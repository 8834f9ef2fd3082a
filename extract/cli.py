"""`redvillm-extract VIDEOS OUT.h5`: a thin click layer over ``run_extract``."""

from __future__ import annotations

import sys
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from redvillm.cache import shards_dir
from redvillm.cli import command, config_from, friendly_errors, options_from, quiet_libraries
from redvillm.extract.config import ExtractConfig


@command()
@options_from(ExtractConfig, positional=("videos", "output"))
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, **flags) -> None:
    """Cache the frozen vision encoder's frame tokens of every video in VIDEOS to OUTPUT (HDF5).

    VIDEOS is a folder (searched recursively) or a .txt/.json list of paths. Rerunning the same
    command resumes; under torchrun each rank takes its own part of the videos. --store pooled
    keeps only each video's pooled sets. VIDEOS may also be a raw cache (RAW.h5): with --store
    pooled its tokens are pooled into OUTPUT without decoding or encoding (the model and frame
    settings are the raw cache's).
    """
    quiet_libraries()
    cfg = config_from(ctx, ExtractConfig, config_file, **flags)
    from redvillm.extract.pipeline import run_extract  # heavy imports after argument checks

    console = Console(stderr=True)
    with _progress(console) as (progress, callback):
        summary = run_extract(cfg, callback, lambda line: console.print(line, highlight=False, soft_wrap=True))
    _print_summary(console, summary)
    if cfg.strict and (summary.failures or summary.skipped_failures):  # a rerun skips, never forgives
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
        ("frames read from a raw cache" if summary.from_cache else "frames encoded", summary.frames),
        ("seconds", f"{summary.seconds:.1f}"),
        ("videos in the cache", summary.cached_total if summary.rank == 0 else "(written by rank 0)"),
        (f"{summary.size.store} tokens per video", f"{summary.size.shapes()} float16"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    if summary.load_line():
        console.print(summary.load_line(), highlight=False)
    console.print(f"read it with: from redvillm import open_cache; cache = open_cache({str(summary.index)!r})",
                  highlight=False)
    for failure in summary.failures[:20]:
        console.print(f"[red]failed[/red] {failure.path}: {failure.reason}", highlight=False)
    if len(summary.failures) > 20:
        console.print(f"... and {len(summary.failures) - 20} more; see the failures-r*.jsonl files")
    if summary.failures:
        manifest = shards_dir(summary.index) / "failures-r*.jsonl"
        console.print(f"failures manifest (path, reason): {manifest}", highlight=False)
