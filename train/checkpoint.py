"""Resumable training state, without pickles: safetensors for tensors, JSON for the rest.

    OUTPUT/checkpoints/step-0000500/
        adapter.safetensors     trainable weights
        optimizer.safetensors   AdamW moments and step counts, keyed state.<param>.<name>
        trainer_state.json      step, epoch, position in the epoch, scheduler, param groups,
                                config fingerprint
        rng.safetensors         torch (and CUDA) RNG states
    OUTPUT/checkpoints/latest   the name of the newest complete checkpoint (replaced atomically)

A checkpoint directory is complete before `latest` names it, so a kill at any moment leaves the
previous checkpoint usable; older directories are removed after the pointer moves.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from redvillm.errors import UserError


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0


def exists(directory: Path) -> bool:
    return (directory / "checkpoints" / "latest").is_file()


def save(directory: Path, adapter, optimizer, scheduler, position: Position, fingerprint: dict) -> Path:
    root = directory / "checkpoints"
    target = root / f"step-{position.step:07d}"
    tmp = root / f".tmp-step-{position.step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}, tmp / "adapter.safetensors")
    tensors, groups = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, tmp / "optimizer.safetensors")
    save_file(_rng_state(), tmp / "rng.safetensors")
    state = {"position": vars(position), "scheduler": _jsonable(scheduler.state_dict()),
             "param_groups": groups, "fingerprint": fingerprint}
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    pointer = root / ".latest.tmp"
    pointer.write_text(target.name)
    os.replace(pointer, root / "latest")
    for old in root.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load(directory: Path, adapter, optimizer, scheduler, fingerprint: dict, device: torch.device) -> Position:
    root = directory / "checkpoints"
    if not (root / "latest").is_file():
        raise UserError(f"{directory}: no checkpoint to resume from; run without --resume to start")
    path = root / (root / "latest").read_text().strip()
    state = json.loads((path / "trainer_state.json").read_text())
    differs = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
    if differs:
        raise UserError(f"{path}: was made with other settings ({', '.join(differs)}); resume with the same "
                        "settings, or start a new --output")
    adapter.load_state_dict(load_file(path / "adapter.safetensors", device=str(device)))
    optimizer.load_state_dict(_unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["param_groups"]))
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(load_file(path / "rng.safetensors"))
    return Position(**state["position"])


def _flatten_optimizer(state_dict: dict) -> tuple[dict, list]:
    tensors = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            tensors[f"state.{index}.{name}"] = torch.as_tensor(value).detach().contiguous().cpu()
    return tensors, _jsonable(state_dict["param_groups"])


def _unflatten_optimizer(tensors: dict, groups: list) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}


def _rng_state() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{i}"] = cuda_state
    return states


def _set_rng_state(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available():
        cuda = [states[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in states]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value
