"""The paper's reference numbers and our results: side by side only when they are comparable.

The published numbers were judged by gpt-3.5-turbo with the messages of Video-ChatGPT's own
scripts. A judge is an LLM: other messages or another model give other verdicts, so our row
sits beside the paper's only under ``--protocol videochatgpt`` with a gpt-3.5-turbo judge;
otherwise the paper's rows are printed apart, under a heading that says why they are not
comparable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is the cli extra's: the tables are imported where they are drawn
    from rich.table import Table

# RED-VILLM paper, Tables 1-2: (accuracy %, score) per zero-shot QA set; 0-5 scores per criterion.
REFERENCE = {
    "Video-ChatGPT (LLaVA-7B)": {"msvd": (64.9, 3.3), "msrvtt": (49.3, 2.8), "tgif": (51.4, 3.0),
                                 "activitynet": (35.2, 2.7), "ci": 2.40, "do": 2.52, "cu": 2.62, "tu": 1.98, "co": 2.37},
    "RED-VILLM LLaVA-7B": {"msvd": (68.9, 2.8), "msrvtt": (52.4, 2.9), "tgif": (55.9, 3.1),
                           "activitynet": (39.2, 3.0), "ci": 2.57, "do": 2.64, "cu": 3.13, "tu": 2.21, "co": 2.39},
    "RED-VILLM Qwen-VL-7B": {"msvd": (71.2, 3.7), "msrvtt": (53.9, 3.1), "tgif": (62.3, 3.3),
                             "activitynet": (44.2, 3.2), "ci": 2.69, "do": 2.72, "cu": 3.32, "tu": 2.32, "co": 2.47},
    "RED-VILLM DeepSeek-VL-7B": {"msvd": (73.5, 3.8), "msrvtt": (55.7, 3.8), "tgif": (64.1, 3.3),
                                 "activitynet": (48.6, 3.5), "ci": 3.05, "do": 2.92, "cu": 3.62, "tu": 2.41, "co": 2.57},
}
DATASETS = {"msvd": "MSVD-QA", "msrvtt": "MSRVTT-QA", "tgif": "TGIF-QA", "activitynet": "ActivityNet-QA"}


def dataset_from_name(name: str) -> str | None:
    lowered = name.lower().replace("-", "").replace("_", "")
    for key, hints in (("msrvtt", ("msrvtt",)), ("msvd", ("msvd",)), ("tgif", ("tgif",)),
                       ("activitynet", ("activitynet", "anet"))):
        if any(h in lowered for h in hints):
            return key
    return None


def comparability(results: dict, paper_judge: str = "gpt-3.5-turbo") -> dict:
    """{"comparable": bool, "why": str}: can our judge numbers sit beside the paper's?"""
    judge = results.get("judge")
    if not judge:
        return {"comparable": False, "why": "no LLM judge was run (only no-judge metrics)"}
    protocol, model = (results.get("protocol") or {}).get("name"), (judge.get("judge") or {}).get("model", "")
    reasons = []
    if protocol != "videochatgpt":
        reasons.append(f"judged with the {protocol} protocol, not Video-ChatGPT's messages (--protocol videochatgpt)")
    if not str(model).startswith(paper_judge):
        reasons.append(f"judge model {model!r}, not {paper_judge}")
    if reasons:
        return {"comparable": False, "why": "; ".join(reasons)}
    why = f"Video-ChatGPT's messages and a {model} judge"
    if results.get("scoring") != "original":
        why += "; scores kept fractional (--original-scoring truncates them with int() as the scripts did)"
    return {"comparable": True, "why": why}


def results_table(results: dict) -> Table:
    """Our row (judge accuracy/score, no-judge metrics), and the paper's rows if comparable."""
    from rich.table import Table

    task, dataset = results["task"], results.get("dataset")
    judge = results.get("judge") or {}
    metrics = results["metrics"]
    protocol = (results.get("protocol") or {}).get("name", "redvillm")
    title = f"{DATASETS.get(dataset, dataset or 'predictions')} - criterion {task} - {protocol} protocol"
    table = Table(title=title)
    table.add_column("model")
    if task == "qa":
        table.add_column("accuracy %", justify="right")
        table.add_column("score", justify="right")
    else:
        table.add_column(f"{task.upper()} score", justify="right")
    for name in ("contains %", "exact %", "token F1 %", "judged", "judge failed"):
        table.add_column(name, justify="right")
    no_judge = [_pct(metrics.get("contains")), _pct(metrics.get("exact_match")), _pct(metrics.get("token_f1"))]
    counts = judge.get("counts", {})
    judged = [str(counts.get("judged", "-")), str(counts.get("judge_failed", "-"))]
    ours = [_pct(judge.get("accuracy")), _num(judge.get("mean_score"))] if task == "qa" else [_num(judge.get("mean_score"))]
    table.add_row("ours", *ours, *no_judge, *judged)
    verdict = results.get("comparable_with_paper") or comparability(results)
    table.caption = ("the paper's rows are comparable: " if verdict["comparable"] else
                     "not comparable with the paper's numbers: ") + verdict["why"]
    if verdict["comparable"]:
        for model, cells in paper_rows(task, dataset):
            table.add_row(f"[dim]{model} (paper)", *cells, *["" for _ in range(5)])
    return table


def paper_rows(task: str, dataset: str | None) -> list[tuple[str, list[str]]]:
    """The paper's cells for this criterion (or QA set): [(model, cells)]."""
    rows = []
    for model, numbers in REFERENCE.items():
        key = dataset if task == "qa" else task
        if key in numbers:
            value = numbers[key]
            rows.append((model, [f"{value[0]:.1f}", f"{value[1]:.1f}"] if task == "qa" else [f"{value:.2f}"]))
    return rows


def paper_table(results: dict) -> Table | None:
    """The paper's rows alone, under a heading saying why ours are not comparable; None if they are."""
    from rich.table import Table

    verdict = results.get("comparable_with_paper") or comparability(results)
    rows = paper_rows(results["task"], results.get("dataset"))
    if verdict["comparable"] or not rows:
        return None
    table = Table(title=f"Published numbers - NOT comparable with ours: {verdict['why']}")
    table.add_column("model (paper)")
    for name in (["accuracy %", "score"] if results["task"] == "qa" else [f"{results['task'].upper()} score"]):
        table.add_column(name, justify="right")
    for model, cells in rows:
        table.add_row(model, *cells)
    return table


def per_type_table(results: dict) -> Table | None:
    """Accuracy per answer type (ActivityNet-QA): the judge's when there is one, else containment."""
    from rich.table import Table

    judge_types = (results.get("judge") or {}).get("by_type") or {}
    metric_types = results["metrics"].get("per_qtype") or {}
    if not judge_types and not metric_types:
        return None
    table = Table(title="per answer type")
    for name in ("type", "questions", "judge accuracy %", "judge score", "contains %"):
        table.add_column(name, justify="left" if name == "type" else "right")
    for qtype in metric_types or judge_types:
        judged, metrics = judge_types.get(qtype, {}), metric_types.get(qtype, {})
        table.add_row(qtype, str(metrics.get("count", judged.get("judged", "-"))), _pct(judged.get("accuracy")),
                      _num(judged.get("mean_score")), _pct(metrics.get("contains")))
    return table


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"
