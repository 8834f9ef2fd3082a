"""TrainConfig: every knob of stage two, with the paper's recipe as defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from redvillm.extract.config import DEFAULT_MODEL
from redvillm.pooling import Pooling, canonical_pooling
from redvillm.video_llm import TEMPORAL_MODULES, TemporalModule


@dataclass
class TrainConfig:
    cache: str  # OUT.h5 written by redvillm-extract
    annotations: str  # VideoInstruct-100K JSON, its conversation form, or JSONL
    output: str  # run directory: adapter, config, log, checkpoints
    model: str = DEFAULT_MODEL  # the image LLM the cache was extracted with
    revision: str | None = None
    pooling: Pooling = "both"  # both | time-averaged (alias temporal) | frame-averaged (alias spatial)
    temporal_module: TemporalModule = "copy"  # copy | none | copy+mlp | random
    lr: float = 2e-5  # the paper's recipe: AdamW, lr 2e-5, global batch 32, 3 epochs
    epochs: int = 3
    batch_size: int = 32  # global: micro-batch x grad_accum x world size
    grad_accum: int = 1
    warmup_ratio: float = 0.03  # linear warmup, then cosine decay to zero
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping
    max_steps: int | None = None  # end (and schedule) after this many optimizer steps
    seed: int = 0
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # frozen LLM; adapter stays fp32
    gradient_checkpointing: bool = False  # through the frozen LLM: memory for compute
    save_every: int = 500  # optimizer steps between checkpoints
    resume: bool = False  # continue from the latest checkpoint in output, if there is one
    overwrite: bool = False  # delete an existing run in output first
    strict: bool = False  # rows without a cached video or with unusable tokens (unreadable, NaN/inf): error
    num_workers: int = 2  # DataLoader workers
    pooled_dir: str | None = None  # pooled sidecar; default: CACHE.pooled/ beside the cache
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
