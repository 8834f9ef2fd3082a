"""Building the video LLM from a backbone, saving its trainable part, and ``load_model(DIR)``.

This module owns the layout of a run directory (what ``redvillm-train --output`` writes):
    adapter.safetensors      the VideoAdapter's weights (projector g_z + temporal module g_t) only
    redvillm_config.json     everything needed to rebuild the model (VideoModelConfig) + the
                             resolved training config and the cache's provenance
    train_config.json        the resolved training config, written when training starts
    train_log.jsonl          one JSON record per logged step
    skipped.json             what the run left out: unusable videos, rows without a cached video
                             or longer than the context
    checkpoints/             resumable training state (redvillm.train.checkpoint); each checkpoint
                             holds its own adapter.safetensors, written by ``adapter_file_bytes``
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as serialize

import redvillm
from redvillm.cache import cache_mismatch, frame_differences, model_identity
from redvillm.errors import UserError
from redvillm.families.registry import load_family
from redvillm.pooling import canonical_pooling
from redvillm.video_llm import VideoAdapter, VideoLLM

ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "redvillm_config.json"
TRAIN_CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.jsonl"
SKIPPED_FILE = "skipped.json"


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
    config = replace(config, **dict(zip(("model", "revision"), resolve_checkpoint(config.model, config.revision))))
    tmp = adapter_tmp(out_dir)
    tmp.write_bytes(adapter_file_bytes(adapter_state(llm.adapter)))
    os.replace(tmp, out_dir / ADAPTER_FILE)
    write_json(out_dir / CONFIG_FILE, asdict(config))


def adapter_state(adapter: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights as they are written: detached, contiguous, on the CPU."""
    return {k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}


def adapter_file_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """The bytes of an adapter.safetensors file (a run's and a checkpoint's alike)."""
    return serialize(state, metadata={"format": "pt", "redvillm": redvillm.__version__})


def adapter_tmp(run_dir: Path) -> Path:
    """Where save_adapter writes the weights before renaming them into place."""
    return run_dir / f".{ADAPTER_FILE}.tmp"


def has_adapter(run_dir: str | os.PathLike) -> bool:
    """True once training has written the run's final weights."""
    return (Path(run_dir) / ADAPTER_FILE).exists()


def resolve_checkpoint(model: str, revision: str | None) -> tuple[str, str | None]:
    """How a run records its base model so it loads from anywhere, later: a local directory as its
    absolute path; a hub id with the commit its revision resolved to (from the local hub cache
    when offline). A hub id that cannot be resolved keeps the revision it was given."""
    identity = model_identity(model)
    if Path(identity).is_absolute():
        return identity, revision
    from huggingface_hub import hf_hub_download
    from transformers.utils.hub import extract_commit_hash

    try:
        return model, extract_commit_hash(hf_hub_download(model, "config.json", revision=revision), None) or revision
    except (OSError, ValueError):
        return model, revision


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> VideoLLM:
    """Rebuild a trained video LLM from a `redvillm-train` output directory, for inference."""
    run_dir = Path(run_dir)
    config = read_model_config(run_dir)
    recorded = config.extra.get("cache", {}).get("model")
    if not Path(config.model).is_absolute() and not Path(config.model).is_dir() and recorded and Path(recorded).is_dir():
        config.model = recorded  # a run of an earlier version recorded a relative path; its cache is absolute
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
    config = VideoModelConfig(**{k: v for k, v in data.items() if k in known})
    config.pooling = canonical_pooling(config.pooling)  # runs of earlier versions recorded an alias
    return config


def run_identity(run_dir: str | os.PathLike) -> dict:
    """What makes a trained run's answers its own: SHA-256 of its adapter weights and of its config
    (the config names the base model and its revision), so a moved run is the same run."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    return {"adapter_sha256": file_sha256(run_dir / ADAPTER_FILE),
            "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trained_tokens(config: VideoModelConfig) -> dict:
    """The provenance of the tokens a run was trained on: its training cache's, or (runs that did
    not record it) what its config states."""
    recorded = config.extra.get("cache")
    if recorded:
        return dict(recorded)
    return {"family": config.family, "model": config.model, "revision": config.revision,
            "num_frames": config.num_frames, "num_patches": config.num_patches, "hidden_size": config.hidden_size}


def check_cache_for_run(cache_path, cache_info: dict, config: VideoModelConfig, run_dir) -> dict[str, dict]:
    """Refuse cached tokens a trained run cannot read (redvillm.cache.cache_mismatch), in one line.

    Returns how the cache's frames differ from the training cache's (T, sampling rule,
    short-video policy; redvillm.cache.frame_differences): such tokens fit the model, and the
    caller warns and records the difference rather than refusing.
    """
    trained = trained_tokens(config)
    why = cache_mismatch(cache_info, trained, wanted_as=f"for the run {run_dir}")
    if why:
        raise UserError(f"{cache_path}: tokens do not fit the run {run_dir} ({why}); extract these videos with "
                        f"`redvillm-extract VIDEOS NEW.h5 --model {trained['model']}` and the run's vision "
                        "settings, then pass --cache NEW.h5")
    return frame_differences(cache_info, trained)


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
