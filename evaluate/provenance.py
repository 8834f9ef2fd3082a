"""What started a predictions file, so that only the same run, cache and settings resume it.

``redvillm-eval predict`` appends answers to PREDS.jsonl across reruns. Answers of two models (or
of one model under two generation settings) in one file would be scored as one number, so the
file's fingerprint is written to PREDS.meta.json ("fingerprint") before its first answer:

    run         SHA-256 of the adapter weights and of redvillm_config.json (a moved run is the same)
    cache       the cache's path and a SHA-256 of its provenance (model, vision layer, T, ...)
    questions   SHA-256 of the question file (and answers file), and the --task override
    generation  max_new_tokens, do_sample, temperature, top_p, seed, and the LLM's dtype

A rerun whose fingerprint differs in anything is refused, naming what differs; ``--overwrite``
starts the file anew. Batch size and device are not part of it: a rerun may lower the batch size
after running out of memory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from redvillm.errors import UserError
from redvillm.model_io import file_sha256, run_identity

GENERATION_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "seed")


def predictions_fingerprint(cfg, dtype: str, cache_info: dict, answers_path: Path | None) -> dict:
    """See the module docstring; `cfg` is a PredictConfig."""
    provenance = json.dumps(cache_info, sort_keys=True).encode()
    return {
        "run": run_identity(cfg.model_dir),
        "cache": {"path": str(Path(cfg.cache).resolve()), "provenance_sha256": hashlib.sha256(provenance).hexdigest()},
        "questions": {"sha256": file_sha256(Path(cfg.questions)),
                      "answers_sha256": file_sha256(answers_path) if answers_path else None, "task": cfg.task},
        "generation": {**{k: getattr(cfg, k) for k in GENERATION_KEYS}, "dtype": dtype},
    }


def check_resumable(output: Path, meta_path: Path, fingerprint: dict, answered: int, cfg) -> None:
    """Refuse to add answers to a predictions file another run, cache or setting started."""
    if not answered:
        return  # nothing to protect: the file is (re)started with this fingerprint
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    if not meta.get("fingerprint"):
        raise UserError(f"{output}: holds {answered} answers but {meta_path.name} does not record which run, cache "
                        "and settings made them; pass --overwrite to answer anew, or pick another --output")
    differs = _differences(meta["fingerprint"], fingerprint)
    if differs:
        then = meta.get("started_by", {})
        raise UserError(f"{output}: holds {answered} answers of other settings ({'; '.join(differs)}); they came from "
                        f"--model-dir {then.get('model_dir')} --cache {then.get('cache')}: rerun with those, pass "
                        "--overwrite to answer anew, or pick another --output")


def started_by(cfg) -> dict:
    """The paths as given when the file was started (shown when a rerun is refused)."""
    return {"model_dir": cfg.model_dir, "cache": cfg.cache, "questions": cfg.questions}


_HASHED = {("run", "adapter_sha256"): "the run's adapter weights differ",
           ("run", "config_sha256"): "the run's config differs",
           ("cache", "provenance_sha256"): "the cache's provenance differs",
           ("questions", "sha256"): "the question file differs",
           ("questions", "answers_sha256"): "the answers file differs"}


def _differences(recorded: dict, current: dict) -> list[str]:
    out = []
    for section, values in current.items():
        then = recorded.get(section, {})
        for key, value in values.items():
            if then.get(key) != value:
                out.append(_HASHED.get((section, key)) or f"{section} {key} is {then.get(key)!r} there, {value!r} now")
    return out


def start_over(output: Path, meta_path: Path, parts_dir: Path) -> None:
    """--overwrite: the predictions, their meta file and any torchrun parts go."""
    for path in (output, meta_path):
        path.unlink(missing_ok=True)
    shutil.rmtree(parts_dir, ignore_errors=True)
