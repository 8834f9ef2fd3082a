"""Synthetic temporal benchmark: real h264 mp4 videos of coloured squares with known answers.

Writes, under ``out_dir``::

    videos/<video_id>.mp4   h264 (libx264), yuv420p, every frame a keyframe, constant QP
    qa.json                 VideoInstruct-100K format: [{"video_id", "q", "a"}, ...]
    labels.json             [{"video_id", "task", "label", "twin_id"}, ...]
    config.json             the SyntheticConfig that produced them

What each task's videos show, and why no single frame or time-average gives the answer away,
is redvillm.data.synthetic_scenes's to say; here: the config, the plan (one random stream per
(seed, task, pair): the same config gives identical pixels, and more videos keep the earlier
ones), the h264 encoding and the files. Encoding keeps the twins honest: intra-only frames at a
constant quantiser make each decoded frame a function of that frame alone (CRF rate control
would let quality depend on earlier frames, i.e. on time order).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import av
import numpy as np

from redvillm.data.synthetic_scenes import Scene, draw_pair, render_frames
from redvillm.settings import setting

TEMPORAL_TASKS = ("order", "direction", "color_change", "count")
CONTROL_TASKS = ("still_color",)  # answerable from one frame
# Append only: a task's random streams follow its place here (renaming one keeps its pixels).
TASKS = ("order", "direction", "color_change", "still_color", "count")
# Earlier names, still accepted wherever tasks are given.
TASK_ALIASES = {"colour": "still_color"}


def canonical_task(name: str) -> str:
    """A task's name from its name or an earlier one (`colour` -> `still_color`)."""
    return TASK_ALIASES.get(name, name)


# libx264, every frame a keyframe, no B-frames, constant quantiser (see module docstring).
X264_OPTIONS = {"x264-params": "keyint=1:min-keyint=1:scenecut=0:bframes=0", "qp": "10"}


@dataclass
class SyntheticConfig:
    """What to generate. Every field is a flag of ``python -m redvillm.data.synthetic`` (redvillm.data.cli)."""

    num_videos: int = setting(8, "Videos per task; even: each video has a counterbalanced twin.")
    tasks: tuple[str, ...] = setting(("order", "direction"), f"Comma-separated, from {','.join(TASKS)}.")
    num_frames: int = setting(48, "Frames in each video file.")
    fps: int = setting(8, "Frames per second of the mp4 files.")
    size: int = setting(224, "Frame side in pixels (square frames; a multiple of 16, >= 32).")
    seed: int = setting(0, "Seed of every video's random stream.")

    def __post_init__(self):
        self.tasks = tuple(canonical_task(t) for t in self.tasks)
        if self.num_videos < 2 or self.num_videos % 2:
            raise ValueError(
                f"num_videos must be even and >= 2 (each video has a twin), got {self.num_videos}"
            )
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks contains duplicates: {self.tasks}")
        if self.size % 16 or self.size < 32:
            raise ValueError(f"size must be a multiple of 16 and >= 32, got {self.size}")
        if self.num_frames < 8:
            raise ValueError(f"num_frames must be >= 8, got {self.num_frames}")
        if "count" in self.tasks and self.num_frames < 12:
            raise ValueError(f"the count task needs num_frames >= 12 (three flashes and gaps), got {self.num_frames}")
        if self.fps < 1 or self.seed < 0:
            raise ValueError(f"fps must be >= 1 and seed >= 0, got fps={self.fps}, seed={self.seed}")


@dataclass(frozen=True)
class VideoSpec:
    video_id: str  # e.g. "order_0003"; the file is videos/<video_id>.mp4
    task: str
    label: str  # the answer's one word: a PALETTE name, "left"/"right", "two"/"three"
    question: str
    answer: str  # full sentence containing the label word


@dataclass(frozen=True)
class PlannedVideo:
    spec: VideoSpec
    scene: Scene
    twin_id: str


def _plan_pair(cfg: SyntheticConfig, task: str, pair: int) -> list[PlannedVideo]:
    # One stream per (seed, task, pair): reproducible, and independent of num_videos.
    rng = np.random.default_rng([cfg.seed, TASKS.index(task), pair])
    background, waves, twins = draw_pair(rng, task, cfg.num_frames, cfg.size)
    if rng.random() < 0.5:  # neither label sits at the even id
        twins = twins[::-1]
    ids = [f"{task}_{2 * pair + k:04d}" for k in (0, 1)]
    planned = []
    for k, (label, squares, question, answer) in enumerate(twins):
        scene = Scene(cfg.num_frames, cfg.size, background, waves, squares)
        spec = VideoSpec(ids[k], task, label, question, answer)
        planned.append(PlannedVideo(spec, scene, twin_id=ids[1 - k]))
    return planned


def plan_videos(cfg: SyntheticConfig) -> list[PlannedVideo]:
    """Every video's spec and drawn scene, without rendering or writing anything."""
    return [
        video
        for task in cfg.tasks
        for pair in range(cfg.num_videos // 2)
        for video in _plan_pair(cfg, task, pair)
    ]


# ----------------------------------------------------------------------------- writing


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """Encode (F, H, W, 3) uint8 RGB frames to an intra-only h264 mp4, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            stream.options = dict(X264_OPTIONS)
            for rgb in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # flush
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, obj) -> None:
    # A killed run leaves either the old file or the new one, never half of one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def generate(
    out_dir: str | os.PathLike,
    cfg: SyntheticConfig,
    progress: Callable[[int, int], None] | None = None,
) -> list[VideoSpec]:
    """Write out_dir/videos/<video_id>.mp4, qa.json, labels.json and config.json.

    Deterministic: the same cfg gives identical decoded pixels and identical JSON.
    progress, if given, is called as progress(done, total) after each video.
    """
    out = Path(out_dir)
    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    planned = plan_videos(cfg)
    for done, video in enumerate(planned, start=1):
        frames = render_frames(video.scene)  # (F, H, W, 3)
        write_mp4(frames, videos_dir / f"{video.spec.video_id}.mp4", cfg.fps)
        if progress is not None:
            progress(done, len(planned))
    # JSON last: qa.json never names a video that is not on disk yet.
    _write_json(out / "config.json", asdict(cfg))
    labels = [
        {"video_id": v.spec.video_id, "task": v.spec.task, "label": v.spec.label, "twin_id": v.twin_id}
        for v in planned
    ]
    _write_json(out / "labels.json", labels)
    qa = [{"video_id": v.spec.video_id, "q": v.spec.question, "a": v.spec.answer} for v in planned]
    _write_json(out / "qa.json", qa)
    return [v.spec for v in planned]


def answer_with_label_word(split_dir: Path) -> None:
    """Rewrite split_dir/qa.json so each answer is its label word ("red", "left"): what a tiny
    frozen LLM can be steered to say, and what an exact-match score can check."""
    labels = {row["video_id"]: row["label"] for row in json.loads((split_dir / "labels.json").read_text())}
    rows = json.loads((split_dir / "qa.json").read_text())
    for row in rows:
        row["a"] = labels[row["video_id"]]
    _write_json(split_dir / "qa.json", rows)


if __name__ == "__main__":  # the command line is redvillm.data.cli's: importing this module loads no click
    from redvillm.data.cli import synthetic_command

    synthetic_command()()
