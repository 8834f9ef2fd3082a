"""The temporal sanity benchmark: the paper's claim in miniature, on synthetic videos.

    python -m redvillm.experiments.sanity OUT_DIR [--task order] [--seeds 0,1,2] [--steps 2000]

Order-of-events questions cannot be answered from time-averaged tokens (pooling "time-averaged"):
the synthetic videos' twins make every bag-of-frames feature identical across opposite labels.
So training with pooling "both" must learn them while "time-averaged" stays at chance.

Accuracy is a two-way forced choice on held-out videos: the model scores its own answer
sentence and its twin's (the opposite label, same question) and picks the likelier one; chance
is 50%. The substrate is the tiny *random-weight* replica (frozen random ViT and LLM): a hard
one (docs/tiny-models.md says why); the trained miniature image LLM is the real test.
Results go to OUT_DIR/results.json and OUT_DIR/results.md. Settings: SanityConfig
(experiments/config.py); the command line is experiments/cli.py; the scoring is
redvillm.evaluate.forced_choice.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from redvillm.data.synthetic import SyntheticConfig, answer_with_label_word, generate
from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava
from redvillm.evaluate.forced_choice import forced_choice_by_task
from redvillm.experiments.config import SanityConfig
from redvillm.extract.config import ExtractConfig
from redvillm.extract.pipeline import run_extract
from redvillm.model_io import has_adapter
from redvillm.train.config import TrainConfig
from redvillm.train.loop import run_train


@dataclass
class SanityResult:
    config: dict
    accuracy: dict = field(default_factory=dict)  # pooling -> [accuracy per seed]
    seconds: float = 0.0


def run_sanity(cfg: SanityConfig, log=print) -> SanityResult:
    started = time.perf_counter()
    out = Path(cfg.out_dir)
    model = build_tiny_llava(out / "tiny-llava", TinyLlavaConfig())
    caches = {}
    for split, count, seed in (("train", cfg.train_videos, 1000), ("test", cfg.test_videos, 2000)):
        videos = out / split
        generate(videos, SyntheticConfig(num_videos=count, tasks=(cfg.task,), num_frames=cfg.num_frames, seed=seed))
        if cfg.answer_form == "word":
            answer_with_label_word(videos)
        caches[split] = out / f"{split}.h5"
        run_extract(ExtractConfig(str(videos / "videos"), str(caches[split]), model=str(model),
                                  num_frames=cfg.num_frames, device="cpu", decode_workers=1))
    result = SanityResult(asdict(cfg))
    for pooling in cfg.poolings:
        for seed in cfg.seeds:
            run = out / "runs" / f"{pooling}-seed{seed}-{_recipe_tag(cfg)}"  # a finished run is reused
            train = TrainConfig(str(caches["train"]), str(out / "train" / "qa.json"), str(run), model=str(model),
                                pooling=pooling, lr=cfg.lr, batch_size=cfg.batch_size, epochs=10**6,
                                max_grad_norm=cfg.max_grad_norm,
                                max_steps=cfg.steps, seed=seed, device="cpu", num_workers=0,
                                save_every=cfg.steps, log_every=50, resume=has_adapter(run))
            if not has_adapter(run):
                run_train(train)
            (accuracy,) = forced_choice_by_task(run, caches["test"], out / "test").values()  # one task
            result.accuracy.setdefault(pooling, []).append(accuracy)
            log(f"{cfg.task} pooling={pooling} seed={seed}: held-out accuracy {accuracy:.3f}")
    result.seconds = time.perf_counter() - started
    write_results(out, result)
    return result


def _recipe_tag(cfg: SanityConfig) -> str:
    recipe = {k: getattr(cfg, k) for k in ("train_videos", "num_frames", "steps", "batch_size", "lr",
                                            "max_grad_norm", "answer_form")}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


def write_results(out: Path, result: SanityResult) -> None:
    (out / "results.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    lines = [f"# Temporal sanity benchmark: {result.config['task']}", "",
             "| pooling | " + " | ".join(f"seed {s}" for s in result.config["seeds"]) + " | mean | min-max |",
             "|---" * (len(result.config["seeds"]) + 3) + "|"]
    for pooling, values in result.accuracy.items():
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {pooling} | {cells} | {statistics.mean(values):.3f} | {min(values):.3f}-{max(values):.3f} |")
    lines += ["", "Two-way forced choice on held-out videos (own answer vs the twin's); chance = 0.5."]
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    from redvillm.experiments.cli import sanity  # the library itself never imports click

    sanity(prog_name="python -m redvillm.experiments.sanity")
