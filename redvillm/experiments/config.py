"""The experiments' settings, torch-free so their command line is built without loading models.

``SanityConfig`` is what ``run_sanity`` runs, ``MiniatureConfig`` what ``run_miniature`` runs; a
field's ``help`` metadata is its --help text. The miniature's configurations (the rows of the
paper's Tables 3-5) and the groups `--configurations` accepts are named here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from redvillm.data.synthetic import CONTROL_TASKS, TASKS, TEMPORAL_TASKS, canonical_task
from redvillm.pooling import canonical_pooling
from redvillm.settings import setting

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

# The sanity benchmark asks one of the generator's temporal tasks (the control needs no time).
SanityTask = Literal[TEMPORAL_TASKS]


def select_configurations(text: str) -> tuple[str, ...]:
    """'table3,table4' or 'all' or full names separated by ';' -> configuration names, in table order."""
    if ";" in text or text in CONFIGURATIONS:
        names = [n.strip() for n in text.split(";") if n.strip()]
    else:
        names = [n.strip() for group in text.split(",") for n in GROUPS.get(group.strip(), [group.strip()])]
    _check_configurations(names)
    return tuple(n for n in CONFIGURATIONS if n in names)


def _check_configurations(names) -> None:
    unknown = [n for n in names if n not in CONFIGURATIONS]
    if unknown:
        raise ValueError(f"unknown configuration {unknown[0]!r}; groups: {', '.join(GROUPS)}; "
                         f"names: {'; '.join(CONFIGURATIONS)}")


@dataclass
class SanityConfig:
    out_dir: str = setting(path=True)  # videos, caches, runs and results all land here
    task: SanityTask = setting("order", "The temporal task asked.")
    seeds: tuple[int, ...] = setting((0, 1, 2), "Training seeds, comma-separated: one run per pooling and seed.")
    poolings: tuple[str, ...] = setting(("both", "time-averaged"), "Poolings compared, comma-separated (the aliases "
                                                                  "temporal, spatial are accepted).")
    train_videos: int = setting(400, "Training videos.")
    test_videos: int = setting(100, "Held-out videos scored.")
    num_frames: int = setting(16, "Frames per video (T).")
    steps: int = setting(2000, "Optimizer steps per run.")
    batch_size: int = setting(16, "Training batch.")
    # a random frozen LLM needs a large step; the paper's 2e-5 is for a real LLaVA
    lr: float = setting(1e-2, "Learning rate of the projector and temporal module.")
    # no clipping: measured to slow the random substrate down
    max_grad_norm: float = setting(0.0, "Gradient clipping (0 disables).")
    answer_form: Literal["word", "sentence"] = setting("word", "word: the label word alone is the answer; sentence: "
                                                                "the generator's sentence.")

    def __post_init__(self):
        self.seeds = tuple(self.seeds)
        self.poolings = tuple(canonical_pooling(p) for p in self.poolings)  # results are keyed by canonical names


@dataclass
class MiniatureConfig:
    out_dir: str = setting(path=True)  # videos, caches, runs and results all land here
    image_llm: str | None = setting(None, "Trained tiny image LLM (default: the shipped one, data/assets).",
                                    path=True)
    seeds: tuple[int, ...] = setting((0, 1, 2), "Training seeds, comma-separated: one run per configuration and "
                                                "seed.")
    tasks: tuple[str, ...] = setting(CONTROL_TASKS + TEMPORAL_TASKS, "Synthetic video tasks, comma-separated; all "
                                                                     "of them in one instruction set.")
    configurations: tuple[str, ...] = setting("all", "Groups table3,table4,table5,extra or all; or full names "
                                                     "separated by ';'.", parse=select_configurations)
    train_videos: int = setting(64, "Training videos per task.")
    test_videos: int = setting(50, "Held-out videos per task.")
    curve: tuple[int, ...] = setting((8, 24), "Fewer training videos per task for the accuracy curve (paper "
                                              "configuration only), comma-separated; '' for none.")
    num_frames: int = setting(16, "Frames per video (T).")
    size: int = setting(64, "Frame side in pixels (the image LLM's input size: no resize).")
    steps: int = setting(600, "Optimizer steps per run.")
    batch_size: int = setting(16, "Training batch.")
    # the tiny frozen LLM needs more than the paper's 2e-5
    lr: float = setting(3e-3, "Learning rate of the projector and temporal module.")

    def __post_init__(self):
        self.seeds, self.curve = tuple(self.seeds), tuple(self.curve)
        self.tasks, self.configurations = tuple(canonical_task(t) for t in self.tasks), tuple(self.configurations)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {', '.join(TASKS)}, got {', '.join(self.tasks)}")
        _check_configurations(self.configurations)
