"""Prediction files in and out: ours (``redvillm-eval predict``) and Video-ChatGPT's.

Read (``read_prediction_file``): a JSONL file (a journal: one object per line; a line torn by a
kill is skipped) or a JSON list, as Video-ChatGPT's inference writes it (a file given to us: read
by ``redvillm.rows``, so a damaged or non-object row is an error naming its line). Field names:
    ours   question_id, video_id, task, qtype, pair (q1/q2 for consistency), question, answer, pred
    peer   video_name, Q, A, pred (QA and criteria ci/do/cu/tu);
           video_name, Q1, Q2, A, pred1, pred2 (consistency, one row per pair); question_id optional
A row without a question_id gets ``row<N>`` (N its 0-based position in the file), which is
stable as long as the file's order is; the results count such rows. Two rows with the same
question_id: the later one counts (a rerun of predict appends), and the results count them.

Written (``export_videochatgpt``): a JSON list in the peer's field names, the files
Video-ChatGPT's scoring scripts read (consistency pairs as one row with pred1/pred2), so the
official scripts themselves can score our predictions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from redvillm.errors import UserError
from redvillm.evaluate.judge.protocols import first
from redvillm.journal import read_journal
from redvillm.rows import read_rows

LIST_HINT = "give a JSON list of prediction objects, or redvillm's predictions JSONL"


@dataclass
class PredictionFile:
    rows: list[dict]  # every row has a question_id
    format: str  # "jsonl" or "json list"
    ids_from_position: int = 0
    duplicate_ids: int = 0
    notes: list[str] = field(default_factory=list)


def read_prediction_file(path: str | Path) -> PredictionFile:
    """The rows of a predictions file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such predictions file; run `redvillm-eval predict` first")
    if path.read_bytes().removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"["):
        # a list someone else's inference wrote: a file given to us, read by the user-file rules
        listed = read_rows(path, "predictions", LIST_HINT, ())
        raw, kind = [row for _, row in listed.rows], listed.form
    else:  # our own journal: a line torn by a kill is skipped
        raw, kind = read_journal(path), "jsonl"
    out = PredictionFile([], kind)
    by_id: dict[str, int] = {}
    for index, row in enumerate(raw):
        row = dict(row)
        if row.get("question_id") is None:
            row["question_id"] = f"row{index}"
            out.ids_from_position += 1
        qid = str(row["question_id"])
        if qid in by_id:
            out.duplicate_ids += 1
            out.rows[by_id[qid]] = row
        else:
            by_id[qid] = len(out.rows)
            out.rows.append(row)
    if out.ids_from_position:
        out.notes.append(f"{out.ids_from_position} rows had no question_id and are named row<N> by their position")
    if out.duplicate_ids:
        out.notes.append(f"{out.duplicate_ids} rows repeated an earlier question_id; the later row counts")
    return out


def judge_items(rows: list[dict], task: str) -> list[dict]:
    """The rows as judge items: ours or the peer's fields, consistency pairs joined."""
    if task == "co":
        return _consistency_items(rows)
    return [{**row, "type": first(row, "qtype", "type")} for row in rows]


def metric_records(rows: list[dict]) -> list[dict]:
    """Records for metrics.aggregate: {"task", "qtype", "pred", "answer"}, one per answer given."""
    records = []
    for row in rows:
        base = {"task": row.get("task"), "qtype": first(row, "qtype", "type"), "answer": first(row, "answer", "A")}
        if "pred1" in row or "pred2" in row:
            records += [{**base, "task": row.get("task", "consistency"), "pred": row.get(k)} for k in ("pred1", "pred2")]
        else:
            records.append({**base, "pred": row.get("pred")})
    return records


def _consistency_items(rows: list[dict]) -> list[dict]:
    items: dict[str, dict] = {}
    for row in rows:
        if any(k in row for k in ("Q1", "Q2", "pred1", "pred2", "question1", "question2")):
            items[str(row["question_id"])] = row
            continue
        if row.get("pair") not in ("q1", "q2"):
            raise UserError(f"prediction {row['question_id']}: not a consistency row (expected Q1/Q2/pred1/pred2, "
                            "or redvillm's q1/q2 pair rows); predict with consistency_qa.json")
        base = str(row["question_id"]).rsplit("/", 1)[0]
        item = items.setdefault(base, {"question_id": base, "answer": row.get("answer"),
                                       "video_id": row.get("video_id")})
        number = row["pair"][1]
        item[f"question{number}"], item[f"pred{number}"] = row.get("question"), row.get("pred")
    return list(items.values())


def export_videochatgpt(predictions: str | Path, output: str | Path) -> dict:
    """Write our predictions as Video-ChatGPT's prediction JSON list; returns counts."""
    source = read_prediction_file(predictions)
    consistency = any(r.get("pair") in ("q1", "q2") or "pred1" in r for r in source.rows)
    items = _consistency_items(source.rows) if consistency else source.rows
    out, unanswered = [], 0
    for item in items:
        video = first(item, "video_name", "video_id")
        if consistency:
            row = {"video_name": video, "question_id": item["question_id"], "Q1": first(item, "question1", "Q1"),
                   "Q2": first(item, "question2", "Q2"), "A": first(item, "answer", "A"),
                   "pred1": item.get("pred1"), "pred2": item.get("pred2")}
            answered = row["pred1"] is not None and row["pred2"] is not None
        else:
            row = {"video_name": video, "question_id": item["question_id"], "Q": first(item, "question", "Q"),
                   "A": first(item, "answer", "A"), "pred": item.get("pred")}
            answered = row["pred"] is not None
        if not answered or row["A"] is None or video is None:
            unanswered += 1  # their scripts would send "None" or raise on it
            continue
        out.append(row)
    target = Path(output)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return {"rows": len(out), "left_out": unanswered, "consistency": consistency, "output": str(target)}
