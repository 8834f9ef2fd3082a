"""`redvillm-eval predict | judge | export | ask`: thin click commands over the evaluation library."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from redvillm.cli import COMMAND_SETTINGS, config_from, friendly_errors, OneLineErrors, options_from, quiet_libraries
from redvillm.evaluate.config import JudgeConfig, PredictConfig



@click.group(context_settings=COMMAND_SETTINGS)
def main() -> None:
    """Answer benchmark questions with a trained run, judge the answers, or ask about one video."""


@main.command(cls=OneLineErrors, context_settings=COMMAND_SETTINGS)
@options_from(PredictConfig)
@click.pass_context
@friendly_errors
def predict(ctx: click.Context, config_file: str | None, **flags) -> None:
    """Answer every question from cached tokens into a predictions JSONL."""
    quiet_libraries()
    from redvillm.evaluate.predict import run_predict

    cfg = config_from(ctx, PredictConfig, config_file, **flags)
    console = Console(stderr=True)
    with _bar(console, "predict") as update:
        summary = run_predict(cfg, lambda done, total: update(done, total, ""))
    console.print(f"{summary.answered} answered now, {summary.already_answered} before, of {summary.questions} "
                  f"questions -> {summary.output}", highlight=False)
    if summary.missing_video:
        shown = ", ".join(summary.missing_video[:5])
        console.print(f"[yellow]{len(summary.missing_video)} videos not in the cache, their questions skipped "
                      f"(first: {shown}); see {summary.output.stem}.meta.json", highlight=False)
    for problem in summary.unmatched[:5]:
        console.print(f"[yellow]{problem}", highlight=False)
    if summary.too_long:
        shown = ", ".join(str(row["question_id"]) for row in summary.too_long[:5])
        console.print(f"[yellow]{len(summary.too_long)} questions longer than the model's context "
                      f"({summary.too_long[0]['context']} positions) skipped (first: {shown}); see "
                      f"{summary.output.stem}.meta.json", highlight=False)
    for key, values in summary.frames_differ.items():
        console.print(f"[yellow]{key} is {values['this cache']!r} in --cache but {values['training']!r} in training: "
                      "these answers are for that setting (recorded in the meta file)", highlight=False)


@main.command(cls=OneLineErrors, context_settings=COMMAND_SETTINGS)
@options_from(JudgeConfig, positional=("predictions",))
@click.pass_context
@friendly_errors
def judge(ctx: click.Context, config_file: str | None, **flags) -> None:
    """Score predictions: no-judge metrics always, an LLM judge when one is given.

    PREDICTIONS: `predict` output, or Video-ChatGPT's prediction file (JSON list or JSONL with
    video_name, Q, A, pred; or Q1, Q2, pred1, pred2 for --task co).
    """
    quiet_libraries()
    from redvillm.evaluate.judge.results import run_judge
    from redvillm.evaluate.report import paper_table, per_type_table, results_table

    cfg = config_from(ctx, JudgeConfig, config_file, **flags)
    console = Console(stderr=True)
    with _bar(console, "judge") as update:
        results = run_judge(cfg, lambda p: update(p.done, p.total, f"{p.failed} failed"))
    if "dry_run" in results:
        console.print(f"{results['requests']} request bodies, nothing sent -> {results['dry_run']}", highlight=False)
        return
    for note in results["input"]["notes"]:
        console.print(f"[yellow]{note}", highlight=False)
    for table in (results_table(results), paper_table(results), per_type_table(results)):
        if table is not None:
            Console().print(table)
    console.print(f"results -> {cfg.output}", highlight=False)


@main.command(cls=OneLineErrors, context_settings=COMMAND_SETTINGS)
@click.argument("predictions", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["videochatgpt"]), default="videochatgpt",
              help="videochatgpt: the JSON list Video-ChatGPT's scoring scripts read.")
@click.option("--output", required=True, type=click.Path(), help="File to write.")
@friendly_errors
def export(predictions: str, fmt: str, output: str) -> None:
    """Write PREDICTIONS in another toolkit's format (to score them with its own scripts)."""
    from redvillm.evaluate.judge.rows import export_videochatgpt

    summary = export_videochatgpt(predictions, output)
    note = f", {summary['left_out']} unanswered rows left out" if summary["left_out"] else ""
    click.echo(f"{summary['rows']} {'consistency ' if summary['consistency'] else ''}rows{note} -> {summary['output']}")


@main.command(cls=OneLineErrors, context_settings=COMMAND_SETTINGS)
@click.argument("model_dir", type=click.Path())
@click.argument("video", type=click.Path())
@click.argument("question")
@click.option("--device", default="auto")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto")
@click.option("--max-new-tokens", default=64)
@friendly_errors
def ask(model_dir: str, video: str, question: str, device: str, dtype: str, max_new_tokens: int) -> None:
    """Answer QUESTION about VIDEO with the trained run in MODEL_DIR."""
    quiet_libraries()
    from redvillm.evaluate.ask import ask as answer

    click.echo(answer(model_dir, video, question, device, dtype, max_new_tokens))


class _bar:
    def __init__(self, console: Console, name: str):
        self.progress = Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[note]}"), TimeRemainingColumn(), console=console)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self.update

    def update(self, done: int, total: int, note: str) -> None:
        if self.task is None:
            self.task = self.progress.add_task("", total=total, note=note)
        self.progress.update(self.task, completed=done, total=total, note=note)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)
