"""``run_judge``: predictions JSONL -> results JSON (no-judge metrics always; an LLM judge if given)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import redvillm
from redvillm.errors import UserError
from redvillm.evaluate.judge import CRITERIA, JudgeCache, OpenAICompatibleJudge, TransformersJudge, judge_all
from redvillm.evaluate.metrics import aggregate
from redvillm.evaluate.predict import read_predictions
from redvillm.evaluate.report import dataset_from_name
from redvillm.model_io import write_json


@dataclass
class JudgeConfig:
    predictions: str  # redvillm-eval predict output
    task: Literal["qa", "ci", "do", "cu", "tu", "co"]
    output: str  # results JSON; verdicts go to <output>.verdicts.jsonl
    dataset: str | None = None  # msvd | msrvtt | tgif | activitynet (default: from the file name)
    judge_url: str | None = None  # OpenAI-compatible endpoint (a hosted API, vLLM, llama.cpp, Ollama)
    judge_model: str | None = None  # the exact, pinned judge model name
    judge_local: str | None = None  # or: a local transformers model (hub id or directory)
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never written
    attempts: int = 3  # asks per row before a reply that never parses counts as judge_failed
    retries: int = 4  # HTTP retries (429, 5xx, timeouts) per ask
    workers: int = 1  # parallel requests to an HTTP judge
    cache: str | None = None  # judge reply cache (default: <output>.judge-cache.jsonl)

    def __post_init__(self):
        if self.task not in CRITERIA:
            raise ValueError(f"task must be one of {', '.join(CRITERIA)}")
        if self.judge_url and not self.judge_model:
            raise ValueError("--judge-url needs --judge-model: the exact, pinned judge model name")
        if self.judge_url and self.judge_local:
            raise ValueError("--judge-url and --judge-local are exclusive")


def run_judge(cfg: JudgeConfig, progress: Callable | None = None) -> dict:
    path = Path(cfg.predictions)
    records = list(read_predictions(path).values())
    if not records:
        raise UserError(f"{path}: no predictions in it; run `redvillm-eval predict` first")
    meta = _read_meta(path)
    items = _pair_consistency(records) if cfg.task == "co" else [_item(r) for r in records]
    results = {
        "redvillm_version": redvillm.__version__, "predictions": str(path), "task": cfg.task,
        "dataset": cfg.dataset or dataset_from_name(path.name) or dataset_from_name(meta.get("predict_config", {}).get("questions", "")),
        "counts": {"predictions": len(records), "items": len(items),
                   "missing_video_questions": meta.get("missing_video_questions", 0)},
        "metrics": aggregate(records), "judge": None,
    }
    backend = _backend(cfg)
    if backend is not None:
        out = Path(cfg.output)
        cache = JudgeCache(cfg.cache or out.with_name(out.stem + ".judge-cache.jsonl"))
        outcome = judge_all(items, cfg.task, backend, cache, cfg.attempts, progress, cfg.workers).to_dict()
        _write_verdicts(out.with_name(out.stem + ".verdicts.jsonl"), outcome.pop("items"))
        results["judge"] = outcome
    write_json(Path(cfg.output), results)
    return results


def _backend(cfg: JudgeConfig):
    if cfg.judge_url:
        return OpenAICompatibleJudge(cfg.judge_url, cfg.judge_model, api_key_env=cfg.api_key_env, retries=cfg.retries)
    if cfg.judge_local:
        return TransformersJudge(cfg.judge_local)
    return None


def _item(record: dict) -> dict:
    return {"question_id": record["question_id"], "question": record["question"], "answer": record.get("answer"),
            "pred": record.get("pred"), "type": record.get("qtype")}


def _pair_consistency(records: list[dict]) -> list[dict]:
    """The two answers of a consistency row (pair q1 / q2) become one judged item."""
    rows: dict[str, dict] = {}
    for record in records:
        if record.get("pair") not in ("q1", "q2"):
            raise UserError(f"{record['question_id']}: not a consistency question; predict with consistency_qa.json")
        base = record["question_id"].rsplit("/", 1)[0]
        row = rows.setdefault(base, {"question_id": base, "answer": record.get("answer")})
        number = record["pair"][1]
        row[f"question{number}"], row[f"pred{number}"] = record["question"], record.get("pred")
    return list(rows.values())


def _read_meta(path: Path) -> dict:
    meta = path.with_name(path.stem + ".meta.json")
    return json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}


def _write_verdicts(path: Path, items: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    tmp.replace(path)


__all__ = ["JudgeConfig", "run_judge", "asdict"]
