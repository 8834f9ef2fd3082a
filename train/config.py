"""TrainConfig: every knob of stage two, with the paper's recipe as defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from redvillm.extract.config import DEFAULT_MODEL
from redvillm.pooling import TEMPORAL_MODULES, Pooling, TemporalModule, canonical_pooling
from redvillm.settings import setting


@dataclass
class TrainConfig:
    cache: str = setting(path=True)  # OUT.h5 written by redvillm-extract
    annotations: str = setting(help="VideoInstruct JSON, conversation JSON or JSONL.", path=True)
    output: str = setting(help="Run directory (adapter, config, log, checkpoints).", path=True)
    model: str = setting(DEFAULT_MODEL, "The image LLM the cache was extracted with.")
    revision: str | None = setting(None, "Hub revision of --model.")
    pooling: Pooling = setting("both", "both = [temporal tokens, spatial tokens]; time-averaged = the spatial tokens "
                                       "(mean over frames) only; frame-averaged = the temporal tokens (mean over "
                                       "patches) only. The paper's names are kept as aliases: temporal = "
                                       "time-averaged, spatial = frame-averaged.")
    temporal_module: TemporalModule = setting("copy", "copy of the pretrained projector; none = one projector for "
                                                      "both (Video-ChatGPT); copy+mlp = copy + random MLP; random = "
                                                      "projector architecture, random init.")
    # the paper's recipe: AdamW, lr 2e-5, global batch 32, 3 epochs
    lr: float = setting(2e-5, "Peak learning rate (AdamW).")
    epochs: int = 3
    batch_size: int = setting(32, "Global batch: micro-batch x grad-accum x world size.")
    grad_accum: int = 1
    warmup_ratio: float = 0.03  # linear warmup, then cosine decay to zero
    weight_decay: float = 0.0
    max_grad_norm: float = setting(1.0, "Gradient clipping (0 disables).")
    max_steps: int | None = setting(None, "Stop (and schedule) after this many optimizer steps.")
    seed: int = 0
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "Frozen LLM dtype (auto: bf16/fp16 on CUDA, fp32 on CPU); trainable weights stay fp32.")
    gradient_checkpointing: bool = setting(False, "Recompute the frozen LLM's activations in backward.")
    save_every: int = setting(500, "Optimizer steps between checkpoints.")
    resume: bool = setting(False, "Continue from the latest checkpoint in --output (if any); a finished run is left "
                                  "as it is.")
    overwrite: bool = setting(False, "Delete an existing run in --output first.")
    strict: bool = setting(False, "Annotation rows whose video is not cached, or whose video's tokens are unusable "
                                  "(unreadable, NaN/inf), are an error instead of being skipped with a count.")
    num_workers: int = setting(2, "DataLoader workers.")
    pooled_dir: str | None = setting(None, "Where the pooled sidecar goes (default: CACHE.pooled/).")
    log_every: int = 10

    def __post_init__(self):
        self.pooling = canonical_pooling(self.pooling)  # runs record the canonical name
        if self.temporal_module not in TEMPORAL_MODULES:
            raise ValueError(f"temporal_module must be one of {', '.join(TEMPORAL_MODULES)}")
        for name in ("epochs", "batch_size", "grad_accum", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("lr must be > 0 and warmup_ratio in [0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")

    def micro_batch_size(self, world_size: int) -> int:
        per_step = self.grad_accum * world_size
        if self.batch_size % per_step:
            raise ValueError(f"global batch {self.batch_size} is not divisible by grad_accum x world size "
                             f"= {self.grad_accum} x {world_size}")
        return self.batch_size // per_step

    def to_dict(self) -> dict:
        return asdict(self)
