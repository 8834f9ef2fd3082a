"""Building the video LLM from a backbone, saving its trainable part, and ``load_model(DIR)``.

A trained run directory holds (see train/):
    adapter.safetensors      the VideoAdapter's weights (projector g_z + temporal module g_t) only
    redvillm_config.json     everything needed to rebuild the model (VideoModelConfig) + the
                             resolved training config and the cache's provenance
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import redvillm
from redvillm.errors import UserError
from redvillm.families.registry import load_family
from redvillm.video_llm import VideoAdapter, VideoLLM

ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "redvillm_config.json"


@dataclass
class VideoModelConfig:
    """What a trained adapter needs to be put back in front of its backbone."""

    model: str  # base image LLM: hub id or local directory
    revision: str | None
    family: str
    pooling: str
    temporal_module: str
    num_frames: int  # T of the cache it was trained on
    num_patches: int  # N
    hidden_size: int  # D
    seed: int = 0
    redvillm_version: str = redvillm.__version__
    extra: dict = field(default_factory=dict)  # training config, cache provenance


def build_video_llm(model: str, pooling: str, temporal_module: str, device: torch.device,
                    dtype: torch.dtype, revision: str | None = None, seed: int = 0) -> VideoLLM:
    """The frozen backbone (in `dtype`) with a fresh adapter (fp32 master weights, trainable)."""
    family = load_family(model, revision)
    backbone = family.load_backbone(device, dtype)
    projector = family.projector(backbone).float()
    # Optional: families whose backbone puts its own vectors after an image's tokens.
    suffix = family.video_suffix(backbone) if hasattr(family, "video_suffix") else None
    adapter = VideoAdapter(projector, pooling, temporal_module, seed, suffix).to(device)
    for parameter in adapter.parameters():
        parameter.requires_grad_(True)
    return VideoLLM(backbone, adapter, family.chat_format(), device, family.backbone_inputs)


def save_adapter(llm: VideoLLM, out_dir: Path, config: VideoModelConfig) -> None:
    """Write adapter weights and config atomically (temp file + rename), config last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in llm.adapter.state_dict().items()}
    tmp = out_dir / f".{ADAPTER_FILE}.tmp"
    save_file(state, tmp, metadata={"format": "pt", "redvillm": redvillm.__version__})
    os.replace(tmp, out_dir / ADAPTER_FILE)
    write_json(out_dir / CONFIG_FILE, asdict(config))


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> VideoLLM:
    """Rebuild a trained video LLM from a `redvillm-train` output directory, for inference."""
    run_dir = Path(run_dir)
    config = read_model_config(run_dir)
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    llm = build_video_llm(config.model, config.pooling, config.temporal_module, device, dtype,
                          config.revision, config.seed)
    state = load_file(run_dir / ADAPTER_FILE, device=str(device))
    missing, unexpected = llm.adapter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{run_dir / ADAPTER_FILE}: does not fit {config.model} with pooling={config.pooling}, "
                        f"temporal_module={config.temporal_module} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    llm.adapter.eval()
    llm.config = config
    return llm


def read_model_config(run_dir: Path) -> VideoModelConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file() or not (run_dir / ADAPTER_FILE).is_file():
        raise UserError(f"{run_dir}: not a redvillm-train output (needs {CONFIG_FILE} and {ADAPTER_FILE})")
    data = json.loads(path.read_text(encoding="utf-8"))
    known = VideoModelConfig.__dataclass_fields__
    return VideoModelConfig(**{k: v for k, v in data.items() if k in known})


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
