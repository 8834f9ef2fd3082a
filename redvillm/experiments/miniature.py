"""The paper in miniature: Tables 3-5 of RED-VILLM on our own tiny image LLM and synthetic videos.

    python -m redvillm.experiments.miniature OUT_DIR [--seeds 0,1,2] [--image-llm DIR]

The image LLM (redvillm.data.tiny_image_llm) learned shapes, colours, places and counts from
still images only. Here it stays frozen, as LLaVA does in the paper, and redvillm trains only
its projector and the temporal module on synthetic *videos* it has never seen (one run per
configuration and seed, all tasks in one instruction set), then answers held-out videos:

    Table 3  pooling: both / temporal-only (time-averaged spatial tokens) / spatial-only
             (frame-averaged temporal tokens)
    Table 4  temporal module: copy / none (one projector for both token sets: Video-ChatGPT)
    Table 5  temporal module: copy / copy + a randomly initialised MLP
    Extra    copy-initialised vs randomly initialised temporal module, and accuracy against
             the number of training videos (how few reach 90%)

Tasks: `colour` (a control answerable from any frame) and the temporal ones `order`,
`direction`, `color_change`, `count`, whose twins make time-averaged tokens useless (data/synthetic.py).
Accuracy is a two-way forced choice on held-out videos (redvillm.evaluate.forced_choice): the
model scores its own answer and its twin's; chance is 0.5. Cells are mean +- standard deviation over seeds. Everything (videos,
caches, runs) lands in OUT_DIR; a rerun reuses what is finished. Results: OUT_DIR/results.json
and OUT_DIR/results.md. Settings: MiniatureConfig (experiments/config.py); the command line is
experiments/cli.py.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from redvillm.data.synthetic import CONTROL_TASKS, TEMPORAL_TASKS, SyntheticConfig, answer_with_label_word, generate
from redvillm.data.tiny_image_llm import shipped_image_llm
from redvillm.evaluate.forced_choice import forced_choice_by_task
from redvillm.experiments.config import CONFIGURATIONS, PAPER, TABLES, MiniatureConfig
from redvillm.extract.config import ExtractConfig
from redvillm.extract.pipeline import run_extract
from redvillm.model_io import has_adapter
from redvillm.train.config import TrainConfig
from redvillm.train.loop import run_train


@dataclass
class MiniatureResult:
    config: dict
    image_llm: str = ""
    accuracy: dict = field(default_factory=dict)  # configuration -> task -> [accuracy per seed]
    curve: dict = field(default_factory=dict)  # train videos per task -> task -> [accuracy per seed]
    seconds: float = 0.0


def run_miniature(cfg: MiniatureConfig, log=print) -> MiniatureResult:
    started = time.perf_counter()
    out = Path(cfg.out_dir)
    image_llm = cfg.image_llm or str(shipped_image_llm())
    caches = {split: _make_split(out, split, count, seed, cfg, image_llm)
              for split, count, seed in (("train", cfg.train_videos, 3000), ("test", cfg.test_videos, 4000))}
    result = MiniatureResult(asdict(cfg), image_llm)
    runs = [(name, cfg.train_videos) for name in cfg.configurations]
    runs += [(PAPER, count) for count in cfg.curve if count < cfg.train_videos]
    for name, count in runs:
        pooling, module = CONFIGURATIONS[name]
        for seed in cfg.seeds:
            annotations = _subset(out / "train", count, cfg.tasks)
            run = out / "runs" / f"{pooling}-{module}-n{count}-seed{seed}-{_recipe_tag(cfg)}"
            if not has_adapter(run):
                run_train(TrainConfig(str(caches["train"]), str(annotations), str(run), model=image_llm,
                                      pooling=pooling, temporal_module=module, lr=cfg.lr, batch_size=cfg.batch_size,
                                      epochs=10**6, max_steps=cfg.steps, seed=seed, device="cpu", num_workers=0,
                                      save_every=cfg.steps, log_every=100, overwrite=True))
            accuracy = forced_choice_by_task(run, caches["test"], out / "test")
            table = result.accuracy if count == cfg.train_videos else result.curve.setdefault(str(count), {})
            target = table.setdefault(name, {}) if count == cfg.train_videos else table
            for task, value in accuracy.items():
                target.setdefault(task, []).append(value)
            log(f"{name:32s} n={count:3d} seed={seed}: " + "  ".join(f"{t} {v:.2f}" for t, v in accuracy.items()))
    for task, values in result.accuracy.get(PAPER, {}).items():
        result.curve.setdefault(str(cfg.train_videos), {})[task] = values
    result.seconds = time.perf_counter() - started
    write_results(out, result)
    return result


def _make_split(out: Path, split: str, count: int, seed: int, cfg: MiniatureConfig, image_llm: str) -> Path:
    videos = out / split
    if not (videos / "labels.json").exists():
        generate(videos, SyntheticConfig(num_videos=count, tasks=cfg.tasks, num_frames=cfg.num_frames,
                                         size=cfg.size, seed=seed))
        answer_with_label_word(videos)
    cache = out / f"{split}.h5"
    run_extract(ExtractConfig(str(videos / "videos"), str(cache), model=image_llm, num_frames=cfg.num_frames,
                              device="cpu", decode_workers=1))  # resumes: finished videos are skipped
    return cache


def _subset(split_dir: Path, per_task: int, tasks: tuple[str, ...]) -> Path:
    """The first per_task videos of every task (whole twin pairs) as an annotations file."""
    path = split_dir / f"qa-{per_task}.json"
    if not path.exists():
        rows = json.loads((split_dir / "qa.json").read_text())
        keep = [r for r in rows if int(r["video_id"].rsplit("_", 1)[1]) < per_task and r["video_id"].rsplit("_", 1)[0] in tasks]
        path.write_text(json.dumps(keep, ensure_ascii=False))
    return path


def _recipe_tag(cfg: MiniatureConfig) -> str:
    keys = ("image_llm", "train_videos", "num_frames", "size", "steps", "batch_size", "lr", "tasks")
    return hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:8]


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"  # one seed: no spread to show
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _temporal_mean(per_task: dict) -> list[float]:
    """Per seed: the mean over the temporal tasks (the paper's point is on those)."""
    rows = [per_task[t] for t in TEMPORAL_TASKS if t in per_task]
    return [statistics.mean(seed_values) for seed_values in zip(*rows)] if rows else []


def write_results(out: Path, result: MiniatureResult) -> None:
    (out / "results.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    tasks = [t for t in CONTROL_TASKS + TEMPORAL_TASKS if t in result.config["tasks"]]
    header = "| configuration | " + " | ".join(tasks) + " | temporal (mean) |"
    lines = ["# RED-VILLM in miniature", "",
             f"Image LLM: `{result.image_llm}` (frozen). Seeds: {result.config['seeds']}. "
             "Two-way forced choice on held-out videos; chance = 0.50. Cells: mean ± std over seeds (one seed: its value).", ""]
    for title, names in TABLES.items():
        names = [n for n in names if n in result.accuracy]
        if len(names) < 2:  # a table compares: one row of it alone says nothing
            continue
        lines += [f"## {title}", "", header, "|---" * (len(tasks) + 2) + "|"]
        for name in names:
            per_task = result.accuracy[name]
            cells = [(_cell(per_task[t]) if t in per_task else "") for t in tasks]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(_temporal_mean(per_task))} |")
        lines.append("")
    if len(result.curve) > 1:
        lines += ["## Accuracy vs training videos (per task, both + copy)", "",
                  "| training videos per task | " + " | ".join(tasks) + " | temporal (mean) |",
                  "|---" * (len(tasks) + 2) + "|"]
        reached = None
        for count in sorted(result.curve, key=int):
            per_task = result.curve[count]
            mean = _temporal_mean(per_task)
            if reached is None and mean and statistics.mean(mean) >= 0.9:
                reached = count
            cells = [(_cell(per_task[t]) if t in per_task else "") for t in tasks]
            lines.append(f"| {count} | " + " | ".join(cells) + f" | {_cell(mean)} |")
        verdict = (f"{reached} videos per task reach 90% on the temporal tasks (mean over seeds)."
                   if reached else "No training-set size here reaches 90% on the temporal tasks.")
        lines += ["", verdict, ""]
    lines.append(f"{result.seconds:.0f} s on this machine.")
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    from redvillm.experiments.cli import miniature  # the library itself never imports click

    miniature(prog_name="python -m redvillm.experiments.miniature")
