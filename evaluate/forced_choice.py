"""Two-way forced choice on twin videos: does a trained run prefer a video's own answer to its twin's?

The synthetic generator (redvillm.data.synthetic) gives every video a twin made of the same frames
in another order, asked the same question, with the opposite answer. For each held-out video the
run scores (sum of the answer's log-probabilities given the video's tokens and the question) its
own answer and its twin's; the video counts as right when its own answer is the likelier. Chance
is 0.5, and a model that only sees time-averaged tokens sits at exactly 0.5 on a temporal task
(twins give it identical inputs), so the score isolates what the temporal tokens carry; no
generation, no judge. Used by the experiments (redvillm.experiments.sanity, .miniature).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from redvillm.batching import VideoSample
from redvillm.cache import open_cache
from redvillm.data.synthetic import CONTROL_TASKS, TEMPORAL_TASKS
from redvillm.families.registry import family_for_cache
from redvillm.model_io import load_model
from redvillm.pooled_sets import cached_tokens


@torch.no_grad()
def forced_choice_by_task(run_dir: Path, cache_path: Path, split_dir: Path, batch: int = 32) -> dict[str, float]:
    """Per task (in the generator's order): share of videos whose own answer scores higher than its twin's.

    `run_dir`: a redvillm-train output; `cache_path`: the split's token cache; `split_dir`: the
    synthetic split's folder (its qa.json and labels.json, which names each video's twin and task).
    `batch` videos (2 x `batch` answers) are scored at a time.
    """
    model = load_model(run_dir)
    cache = open_cache(cache_path)
    family = family_for_cache(model.config.model, model.config.revision, cache.info)
    qa = {row["video_id"]: row for row in json.loads((split_dir / "qa.json").read_text())}
    labels = json.loads((split_dir / "labels.json").read_text())
    twin = {row["video_id"]: row["twin_id"] for row in labels}
    task_of = {row["video_id"]: row["task"] for row in labels}
    videos = sorted(qa)
    wins: dict[str, list[bool]] = {}
    for start in range(0, len(videos), batch):
        chunk = videos[start : start + batch]
        samples = []
        for video_id in chunk:
            temporal, spatial = cached_tokens(cache, family.pool, video_id)  # either store
            for answer in (qa[video_id]["a"], qa[twin[video_id]]["a"]):
                samples.append(VideoSample(model.chat.encode(qa[video_id]["q"], answer), temporal, spatial))
        scores = model.answer_logprobs(model.batch(samples)).view(-1, 2)
        for video_id, (own, other) in zip(chunk, scores.tolist()):
            wins.setdefault(task_of[video_id], []).append(own > other)
    return {task: sum(w) / len(w) for task, w in sorted(wins.items(), key=lambda kv: _task_order(kv[0]))}


def _task_order(task: str) -> int:
    order = CONTROL_TASKS + TEMPORAL_TASKS
    return order.index(task) if task in order else len(order)
