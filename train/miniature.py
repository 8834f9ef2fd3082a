"""The paper in miniature: Tables 3-5 of RED-VILLM on our own tiny image LLM and synthetic videos.

    python -m redvillm.train.miniature OUT_DIR [--seeds 0,1,2] [--image-llm DIR]

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
Accuracy is a two-way forced choice on held-out videos: the model scores its own answer and its
twin's; chance is 0.5. Cells are mean +- standard deviation over seeds. Everything (videos,
caches, runs) lands in OUT_DIR; a rerun reuses what is finished. Results: OUT_DIR/results.json
and OUT_DIR/results.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from redvillm.batching import VideoSample
from redvillm.cache import open_cache
from redvillm.pooled_sets import cached_tokens
from redvillm.data.synthetic import (
    CONTROL_TASKS,
    TEMPORAL_TASKS,
    SyntheticConfig,
    answer_with_label_word,
    generate,
)
from redvillm.data.tiny_image_llm import shipped_image_llm
from redvillm.extract.config import ExtractConfig
from redvillm.extract.pipeline import run_extract
from redvillm.families.registry import family_for_cache
from redvillm.model_io import has_adapter, load_model
from redvillm.train.config import TrainConfig
from redvillm.train.loop import run_train

# name -> (pooling, temporal module); the rows of the paper's tables.
CONFIGURATIONS = {
    "both, copy (RED-VILLM)": ("both", "copy"),
    "temporal-only (time-averaged)": ("time-averaged", "copy"),
    "spatial-only (frame-averaged)": ("frame-averaged", "copy"),
    "both, none (Video-ChatGPT)": ("both", "none"),
    "both, copy + MLP": ("both", "copy+mlp"),
    "both, random init": ("both", "random"),
}
TABLES = {
    "Table 3: pooling": ["both, copy (RED-VILLM)", "temporal-only (time-averaged)", "spatial-only (frame-averaged)"],
    "Table 4: temporal module vs one shared projector": ["both, copy (RED-VILLM)", "both, none (Video-ChatGPT)"],
    "Table 5: temporal module vs an extra random MLP": ["both, copy (RED-VILLM)", "both, copy + MLP"],
    "Extra: copy-initialised vs random temporal module": ["both, copy (RED-VILLM)", "both, random init"],
}
PAPER = "both, copy (RED-VILLM)"
GROUPS = {"table3": TABLES["Table 3: pooling"], "table4": TABLES["Table 4: temporal module vs one shared projector"],
          "table5": TABLES["Table 5: temporal module vs an extra random MLP"],
          "extra": TABLES["Extra: copy-initialised vs random temporal module"], "all": list(CONFIGURATIONS)}


def select_configurations(text: str) -> tuple[str, ...]:
    """'table3,table4' or 'all' or full names separated by ';' -> configuration names, in table order."""
    if ";" in text or text in CONFIGURATIONS:
        names = [n.strip() for n in text.split(";") if n.strip()]
    else:
        names = [n.strip() for group in text.split(",") for n in GROUPS.get(group.strip(), [group.strip()])]
    unknown = [n for n in names if n not in CONFIGURATIONS]
    if unknown:
        raise ValueError(f"unknown configuration {unknown[0]!r}; groups: {', '.join(GROUPS)}; "
                         f"names: {'; '.join(CONFIGURATIONS)}")
    return tuple(n for n in CONFIGURATIONS if n in names)


@dataclass
class MiniatureConfig:
    out_dir: str
    image_llm: str | None = None  # trained tiny image LLM; None: the shipped one (data/assets)
    seeds: tuple[int, ...] = (0, 1, 2)
    tasks: tuple[str, ...] = CONTROL_TASKS + TEMPORAL_TASKS
    configurations: tuple[str, ...] = tuple(CONFIGURATIONS)
    train_videos: int = 64  # per task
    test_videos: int = 50  # per task
    curve: tuple[int, ...] = (8, 24)  # fewer training videos per task, paper configuration only
    num_frames: int = 16  # T
    size: int = 64  # frame side in pixels (the image LLM's input size: no resize)
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3  # the adapter's lr; the tiny frozen LLM needs more than the paper's 2e-5


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


@torch.no_grad()
def forced_choice_by_task(run_dir: Path, cache_path: Path, split_dir: Path, batch: int = 32) -> dict[str, float]:
    """Per task: share of videos whose own answer scores higher than its twin's."""
    model = load_model(run_dir)
    cache = open_cache(cache_path)
    family = family_for_cache(model.config.model, model.config.revision, cache.info)
    qa = {row["video_id"]: row for row in json.loads((split_dir / "qa.json").read_text())}
    labels = json.loads((split_dir / "labels.json").read_text())
    twin = {row["video_id"]: row["twin_id"] for row in labels}
    task_of = {row["video_id"]: row["task"] for row in labels}
    videos = sorted(qa)
    wins: dict[str, list[bool]] = {}
    for start in range(0, len(videos), batch):
        chunk = videos[start : start + batch]
        samples = []
        for video_id in chunk:
            temporal, spatial = cached_tokens(cache, family.pool, video_id)  # either store
            for answer in (qa[video_id]["a"], qa[twin[video_id]]["a"]):
                samples.append(VideoSample(model.chat.encode(qa[video_id]["q"], answer), temporal, spatial))
        scores = model.answer_logprobs(model.batch(samples)).view(-1, 2)
        for video_id, (own, other) in zip(chunk, scores.tolist()):
            wins.setdefault(task_of[video_id], []).append(own > other)
    return {task: sum(w) / len(w) for task, w in sorted(wins.items(), key=lambda kv: _task_order(kv[0]))}


def _task_order(task: str) -> int:
    order = CONTROL_TASKS + TEMPORAL_TASKS
    return order.index(task) if task in order else len(order)


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


def main(argv=None) -> None:
    defaults = MiniatureConfig("")
    parser = argparse.ArgumentParser(prog="python -m redvillm.train.miniature", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--image-llm", default=None, help="Trained tiny image LLM (default: the shipped one).")
    parser.add_argument("--seeds", default=",".join(map(str, defaults.seeds)))
    parser.add_argument("--tasks", default=",".join(defaults.tasks))
    parser.add_argument("--configurations", default="all",
                        help="Groups table3,table4,table5,extra or all; or full names separated by ';'.")
    parser.add_argument("--curve", default=",".join(map(str, defaults.curve)), help="'' for none.")
    for name in ("train_videos", "test_videos", "num_frames", "size", "steps", "batch_size"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    args = vars(parser.parse_args(argv))
    args["seeds"] = tuple(int(s) for s in args["seeds"].split(","))
    args["tasks"] = tuple(args["tasks"].split(","))
    args["curve"] = tuple(int(s) for s in args["curve"].split(",") if s)
    try:
        args["configurations"] = select_configurations(args["configurations"])
    except ValueError as err:
        parser.error(str(err))

    from redvillm.cli import friendly_errors, quiet_libraries  # the library itself never imports click

    quiet_libraries()
    friendly_errors(_run_and_print)(MiniatureConfig(**args))


def _run_and_print(cfg: MiniatureConfig) -> None:
    run_miniature(cfg)
    print((Path(cfg.out_dir) / "results.md").read_text())


if __name__ == "__main__":
    main()
