"""Resumable training state, without pickles: safetensors for tensors, JSON for the rest.

    OUTPUT/checkpoints/step-0000500/
        adapter.safetensors     trainable weights
        optimizer.safetensors   AdamW moments and step counts, keyed state.<param>.<name>
        trainer_state.json      step, epoch, position in the epoch, scheduler, param groups,
                                config fingerprint
        rng.safetensors         torch (and CUDA) RNG states
    OUTPUT/checkpoints/step-0000500.1/  the same step saved again (the final save, a resumed
                                finished run) while step-0000500 is still the one `latest` names
    OUTPUT/checkpoints/latest   the name of the newest complete checkpoint (replaced atomically)

A checkpoint directory is written and fsynced under a temporary name and renamed before `latest`
names it, and no checkpoint is removed before `latest` has moved off it, so a kill at any moment
leaves `latest` naming a complete checkpoint; older directories are removed after the pointer moves.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as serialize

from redvillm.errors import UserError
from redvillm.journal import append_journal, read_journal
from redvillm.model_io import ADAPTER_FILE, adapter_file_bytes, adapter_state
from redvillm.pooling import canonical_pooling


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0


def exists(directory: Path) -> bool:
    return (directory / "checkpoints" / "latest").is_file()


def save(directory: Path, adapter, optimizer, scheduler, position: Position, fingerprint: dict) -> Path:
    """Write a complete checkpoint, then point `latest` at it, then remove the older ones.

    The checkpoint `latest` names is never touched before the pointer has moved: when this step
    was saved already (the final save, or a resumed finished run), the new one goes to a second
    name, so a kill at any moment leaves `latest` naming a complete checkpoint.
    """
    weights = adapter_state(adapter)
    for name, value in weights.items():
        if not bool(torch.isfinite(value).all()):  # the loop stops before this; never write one
            raise UserError(f"{directory}: refusing to save a checkpoint whose weight {name} is not finite; "
                            "--resume continues from the last good checkpoint")
    root = directory / "checkpoints"
    current = _latest_name(root)
    target = _free_target(root, position.step, current)
    tmp = root / f".tmp-{target.name}"
    moments, groups = _flatten_optimizer(optimizer.state_dict())
    state = {"position": vars(position), "scheduler": _jsonable(scheduler.state_dict()), "param_groups": groups,
             "fingerprint": fingerprint}
    files = {ADAPTER_FILE: weights, "optimizer.safetensors": moments, "rng.safetensors": _rng_state()}
    needed = sum(t.numel() * t.element_size() for tensors in files.values() for t in tensors.values()) + 2**16
    with disk_full(tmp, needed, f"; {_kept(current)}", cleanup=tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, tensors in files.items():
            _write_bytes(tmp / name, adapter_file_bytes(tensors) if name == ADAPTER_FILE else serialize(tensors))
        _write_bytes(tmp / "trainer_state.json", json.dumps(state, indent=1).encode())
        shutil.rmtree(target, ignore_errors=True)  # never `current`: a leftover of an earlier kill
        os.replace(tmp, target)
        _write_bytes(root / ".latest.tmp", target.name.encode())
        os.replace(root / ".latest.tmp", root / "latest")
        _sync_dir(root)
    for old in root.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def disk_full(path: Path, needed: int, then: str = "", cleanup: Path | None = None,
              fix: str = "free space, then rerun with --resume"):
    """Turn "no space left" while writing `path` into one line naming it and the space needed."""
    try:
        yield
    except (OSError, SafetensorError) as err:
        if not _is_disk_full(err):
            raise
        if cleanup is not None and cleanup.is_dir():  # a partial write only takes space
            shutil.rmtree(cleanup, ignore_errors=True)
        elif cleanup is not None:
            cleanup.unlink(missing_ok=True)
        free = shutil.disk_usage(_existing(path)).free
        raise UserError(f"{path}: no space left on the device (writing it needs about {_mb(needed)}, "
                        f"{_mb(free)} free now){then}; {fix}") from None


def _is_disk_full(err: Exception) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)  # safetensors reports the OS error in its message only
    return any(mark in text for mark in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT),
                                         f"os error {errno.ENOSPC})", f"os error {errno.EDQUOT})"))


def kept_line(directory: Path) -> str:
    return _kept(_latest_name(directory / "checkpoints"))


def _kept(current: str | None) -> str:
    return f"the last complete checkpoint ({current}) is kept" if current else "no checkpoint was written yet"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def latest_step(directory: Path) -> int | None:
    """The step of the checkpoint `latest` names, or None when there is none."""
    name = _latest_name(directory / "checkpoints")
    return int(name.split("-")[1].split(".")[0]) if name else None


def _latest_name(root: Path) -> str | None:
    try:
        return (root / "latest").read_text().strip()
    except FileNotFoundError:
        return None


def _free_target(root: Path, step: int, current: str | None) -> Path:
    """`step-N`, or `step-N.1` when `step-N` is the checkpoint `latest` names (and vice versa)."""
    for name in (f"step-{step:07d}", f"step-{step:07d}.1"):
        if name != current:
            return root / name
    raise AssertionError("unreachable: two names, one current")


def _write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync, so a renamed checkpoint is complete on disk, not only in the page cache."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(directory: Path, adapter, optimizer, scheduler, fingerprint: dict, device: torch.device) -> Position:
    root = directory / "checkpoints"
    if not (root / "latest").is_file():
        raise UserError(f"{directory}: no checkpoint to resume from; run without --resume to start")
    path = root / (root / "latest").read_text().strip()
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"{root / 'latest'}: names {path.name}, which is missing or incomplete (an older redvillm "
                        "was killed while saving); start the run again with --overwrite")
    state = json.loads((path / "trainer_state.json").read_text())
    saved = dict(state["fingerprint"])
    if "pooling" in saved:  # a run started under an alias (temporal, spatial) resumes under its canonical name
        saved["pooling"] = canonical_pooling(saved["pooling"])
    differs = sorted(k for k in fingerprint if saved.get(k) != fingerprint[k])
    if differs:
        raise UserError(f"{path}: was made with other settings ({', '.join(differs)}); resume with the same "
                        "settings, or start a new --output")
    adapter.load_state_dict(load_file(path / ADAPTER_FILE, device=str(device)))
    optimizer.load_state_dict(_unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["param_groups"]))
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(load_file(path / "rng.safetensors"))
    return Position(**state["position"])


def trim_log(path: Path, step: int) -> None:
    """On resume, drop log records of steps after the checkpoint (they are trained again) and a
    line torn by a kill mid-write; the file is replaced atomically."""
    if not path.exists():
        return
    kept = [record for record in read_journal(path) if record.get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    append_journal(tmp, kept)
    tmp.touch()
    os.replace(tmp, path)


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
