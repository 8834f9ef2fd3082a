"""``run_judge``: a predictions file -> results JSON (no-judge metrics always; an LLM judge if given).

The results say exactly what was judged and how: the protocol (``redvillm``, ours, by
default; or ``videochatgpt``, the messages of Video-ChatGPT's own scripts read from
``official_scripts``), the scoring rule (ours, or ``original`` to reproduce the scripts'
int() truncation and yes/no substring rule), the judge model and request parameters, every
deviation from the original scoring scripts, and whether the numbers can sit beside the
paper's (only under the videochatgpt protocol with a gpt-3.5-turbo judge).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import redvillm
from redvillm.errors import UserError
from redvillm.evaluate.config import JudgeConfig
from redvillm.evaluate.judge.backends import OpenAICompatibleJudge, TransformersJudge
from redvillm.evaluate.judge.cache import JudgeCache
from redvillm.evaluate.judge.run import judge_all
from redvillm.evaluate.judge.official import VideoChatGPTProtocol
from redvillm.evaluate.judge.protocols import RedvillmProtocol, item_fields
from redvillm.evaluate.judge.rows import judge_items, metric_records, read_prediction_file
from redvillm.evaluate.metrics import aggregate
from redvillm.evaluate.report import comparability, dataset_from_name
from redvillm.model_io import write_json

PAPER_JUDGE = "gpt-3.5-turbo"


def run_judge(cfg: JudgeConfig, progress: Callable | None = None) -> dict:
    path = Path(cfg.predictions)
    source = read_prediction_file(path)
    if not source.rows:
        raise UserError(f"{path}: no predictions in it; run `redvillm-eval predict` first")
    meta = _read_meta(path)
    items = judge_items(source.rows, cfg.task)
    protocol = _protocol(cfg)
    if cfg.dry_run:
        return _dry_run(cfg, protocol, items)
    backend = _backend(cfg, protocol)
    scoring = "original" if cfg.original_scoring else "redvillm"
    results = {
        "redvillm_version": redvillm.__version__, "predictions": str(path), "task": cfg.task,
        "dataset": cfg.dataset or dataset_from_name(path.name)
        or dataset_from_name(meta.get("predict_config", {}).get("questions", "")),
        "input": {"format": source.format, "ids_from_position": source.ids_from_position,
                  "duplicate_ids": source.duplicate_ids, "notes": source.notes},
        "counts": {"predictions": len(source.rows), "items": len(items),
                   "missing_video_questions": meta.get("missing_video_questions", 0)},
        "metrics": aggregate(metric_records(source.rows)), "judge": None,
        "protocol": protocol.describe(cfg.task), "scoring": scoring,
    }
    if backend is not None:
        out = Path(cfg.output)
        cache = JudgeCache(cfg.cache or out.with_name(out.stem + ".judge-cache.jsonl"))
        outcome = judge_all(items, cfg.task, backend, cache, cfg.attempts, progress, cfg.workers, protocol=protocol,
                            scoring=scoring, row_timeout=cfg.row_timeout,
                            stop_after_failures=cfg.stop_after_failures).to_dict()
        _write_verdicts(out.with_name(out.stem + ".verdicts.jsonl"), outcome.pop("items"))
        results["judge"] = outcome
        results["deviations"] = deviations(cfg, results["protocol"], outcome["judge"])
    results["comparable_with_paper"] = comparability(results, PAPER_JUDGE)
    write_json(Path(cfg.output), results)
    return results


def _protocol(cfg: JudgeConfig):
    if cfg.protocol == "redvillm":
        return RedvillmProtocol()
    protocol = VideoChatGPTProtocol(cfg.official_scripts)
    protocol.script(cfg.task)  # a missing or unexpected script stops here, before any request
    return protocol


def _backend(cfg: JudgeConfig, protocol):
    if cfg.judge_url:
        parameters = None  # redvillm: temperature 0 and a token cap
        if protocol.name == "videochatgpt":  # exactly the script's keywords besides model and messages
            parameters = {k: v for k, v in protocol.script(cfg.task).request.items() if k != "model"}
        return OpenAICompatibleJudge(cfg.judge_url, cfg.judge_model, api_key_env=cfg.api_key_env,
                                     retries=cfg.retries, timeout=cfg.timeout, parameters=parameters)
    if cfg.judge_local:
        return TransformersJudge(cfg.judge_local)
    return None


def _dry_run(cfg: JudgeConfig, protocol, items: list[dict]) -> dict:
    """The request bodies of the first rows, as they would be sent; nothing is sent.

    Without --judge-url, redvillm's protocol shows model and messages only (its parameters
    belong to the HTTP client); the videochatgpt protocol shows the script's own keywords.
    """
    backend = _backend(cfg, protocol) if cfg.judge_url else None
    official = protocol.script(cfg.task).request if protocol.name == "videochatgpt" else {}
    model = cfg.judge_model or official.get("model")  # without --judge-model: the script's own
    parameters = backend.parameters if backend is not None else {k: v for k, v in official.items() if k != "model"}
    out = Path(cfg.output)
    target = out.with_name(out.stem + ".requests.jsonl")
    bodies = []
    for index, item in enumerate(items):
        fields = item_fields(item, cfg.task, index)
        if fields is None:
            continue
        bodies.append({"question_id": str(item["question_id"]),
                       "body": {"model": model, "messages": protocol.messages(cfg.task, fields), **parameters}})
        if len(bodies) == cfg.dry_run:
            break
    _write_verdicts(target, bodies)
    return {"dry_run": str(target), "requests": len(bodies), "protocol": protocol.describe(cfg.task)}


def deviations(cfg: JudgeConfig, protocol: dict, judge: dict) -> list[str]:
    """How this run differs from what Video-ChatGPT's scoring scripts do, one sentence each."""
    out = []
    if protocol["name"] == "redvillm":
        out.append("messages: redvillm's own wording, not the scripts' (--protocol videochatgpt sends theirs)")
        out.append(f"request parameters {judge.get('parameters')} (the scripts send none besides the model)")
    else:
        official = protocol["official_request"].get("model")
        if judge.get("model") != official:
            out.append(f"judge model {judge.get('model')!r} instead of the script's {official!r}")
    out.append(f"each row is asked at most {cfg.attempts} times ({cfg.retries} HTTP retries each, "
               f"{cfg.row_timeout:g} s per row), then counted judge_failed and left out of accuracy and score "
               "(the scripts re-ask for ever)")
    out.append("replies cached and reused on a rerun (the scripts reuse their per-row output files)")
    out.append("rows without a prediction are counted as no_prediction and not sent")
    if cfg.original_scoring:
        out.append("original scoring: whole reply read with ast.literal_eval, int() truncation of scores, "
                   "QA yes/no by substring, accuracy = yes / (yes + no)")
    else:
        out.append("fractional scores kept (the scripts truncate each score with int())")
        out.append("reply read tolerantly (JSON, code fences, text around the dict); scores outside 0-5 rejected")
        if cfg.task == "qa":
            out.append("QA pred must be exactly yes or no (the scripts take any pred containing 'yes' as yes, "
                       "else one containing 'no' as no)")
    return out


def _read_meta(path: Path) -> dict:
    meta = path.with_name(path.stem + ".meta.json")
    return json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}


def _write_verdicts(path: Path, items: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    tmp.replace(path)


__all__ = ["JudgeConfig", "run_judge", "deviations"]
