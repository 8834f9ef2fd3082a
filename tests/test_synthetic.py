"""Tests of the synthetic temporal benchmark (redvillm.data.synthetic).

Beyond files, shapes and determinism, the key test is a *probe* for label leakage. A
temporal benchmark is only honest if the answer cannot be read off the time-averaged video
(a model that pools frames away must sit at chance). The probe:

1. encodes every decoded frame with a fixed, label-blind encoder standing in for a frozen
   vision tower: per cell of a 2x2 grid, the mean RGB plus a 27-bin colour histogram (3
   levels per channel). The histogram lets a *linear* read-out name colours, which raw RGB
   does not (red vs blue is not a linear function of RGB against a random background);
2. builds two feature sets per video: the time-average of the frame features, and a
   time-aware version (the averages of the four quarters of the video, concatenated);
3. fits a ridge one-hot regression over the label vocabulary and answers each video's
   binary question "label or twin's label?" (the order question names both colours; chance
   is 50%), with whole twin pairs held out together (10-fold, leave-pairs-out).

The time-averaged probe must sit at chance while the time-aware probe, on the same videos,
must be near perfect: that proves the probe has the power to see labels. A third check feeds
deliberately leaky variants of the scenes (both order squares stay to the end; the colour
changes at 1/3 instead of 1/2; the direction square vanishes for the last quarter) and
requires the time-averaged probe to catch each leak.
"""

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import decord
import numpy as np
import pytest
from click.testing import CliRunner

from redvillm.data import synthetic
from redvillm.data.cli import synthetic_command
from redvillm.data.synthetic import (
    TEMPORAL_TASKS,
    SyntheticConfig,
    VideoSpec,
    generate,
    plan_videos,
)
from redvillm.data.synthetic_scenes import PALETTE, render_frames, square_at

SMALL = dict(num_videos=4, tasks=TEMPORAL_TASKS, num_frames=16, fps=6, size=64, seed=3)


def decode(path: Path) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of an mp4, read with decord as the extract stage does."""
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """A small dataset of every task, written under a path with spaces and non-ASCII."""
    out = tmp_path_factory.mktemp("synthetic") / "dir with spaces é 视频"
    cfg = SyntheticConfig(**SMALL)
    calls = []
    specs = generate(out, cfg, progress=lambda done, total: calls.append((done, total)))
    frames = {s.video_id: decode(out / "videos" / f"{s.video_id}.mp4") for s in specs}
    return out, cfg, specs, frames, calls


def palette_masks(frames: np.ndarray, max_distance: float = 60.0) -> dict[str, np.ndarray]:
    """Per palette colour, a (F, H, W) bool mask of pixels close to it."""
    pixels = frames.astype(np.float32)
    return {
        name: np.linalg.norm(pixels - np.asarray(rgb, np.float32), axis=-1) < max_distance
        for name, rgb in PALETTE.items()
    }


# ----------------------------------------------------------------------------- config, files


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(num_videos=3), "even"),
        (dict(num_videos=0), "even"),
        (dict(tasks=("order", "spin")), "tasks"),
        (dict(tasks=()), "tasks"),
        (dict(size=100), "multiple of 16"),
        (dict(num_frames=4), "num_frames"),
    ],
)
def test_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**bad)


def test_generate_writes_videos_and_json(small_set):
    out, cfg, specs, frames, calls = small_set
    assert len(specs) == len(cfg.tasks) * cfg.num_videos
    assert all(isinstance(s, VideoSpec) for s in specs)
    assert calls == [(i, len(specs)) for i in range(1, len(specs) + 1)]
    qa = json.loads((out / "qa.json").read_text(encoding="utf-8"))
    labels = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    assert qa == [{"video_id": s.video_id, "q": s.question, "a": s.answer} for s in specs]
    assert [row["label"] for row in labels] == [s.label for s in specs]
    assert all(s.label in s.answer for s in specs)
    assert not [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    for spec in specs:
        reader = decord.VideoReader(str(out / "videos" / f"{spec.video_id}.mp4"))
        assert len(reader) == cfg.num_frames
        assert reader.get_avg_fps() == pytest.approx(cfg.fps)
        assert frames[spec.video_id].shape == (cfg.num_frames, cfg.size, cfg.size, 3)


def test_decoded_pixels_match_rendered_frames(small_set):
    _, cfg, specs, frames, _ = small_set
    for video in plan_videos(cfg):
        rendered = render_frames(video.scene)  # (F, H, W, 3)
        decoded = frames[video.spec.video_id]
        assert np.abs(decoded.astype(int) - rendered).mean() < 4.0  # YUV 4:2:0 round trip
        # Inside every square (away from chroma-subsampled edges) the palette colour survives.
        for t in (0, cfg.num_frames // 2, cfg.num_frames - 1):
            for square in video.scene.squares:
                state = square_at(square, t, cfg.num_frames)
                if state is None:
                    continue
                x, y, colour = state
                inner = decoded[t, y + 3 : y + square.side - 3, x + 3 : x + square.side - 3]
                assert np.abs(inner.reshape(-1, 3).mean(0) - colour).max() < 8


def test_labels_agree_with_decoded_pixels(small_set):
    """Read each answer back from the pixels alone, without the drawn scene parameters."""
    _, cfg, specs, frames, _ = small_set
    for spec in specs:
        masks = palette_masks(frames[spec.video_id])  # name -> (F, H, W)
        counts = {name: mask.sum(axis=(1, 2)) for name, mask in masks.items()}  # name -> (F,)
        if spec.task == "direction":
            name = max(counts, key=lambda n: counts[n].sum())
            xs = [np.nonzero(m)[1].mean() for m in masks[name]]  # centroid x per frame
            slope = np.corrcoef(np.arange(len(xs)), xs)[0, 1]
            assert (slope > 0.9) if spec.label == "right" else (slope < -0.9), spec
        elif spec.task == "order":
            named = [word for word in re.findall(r"\w+", spec.question) if word in PALETTE]
            assert len(named) == 2 and spec.label in named
            onset = {n: np.argmax(counts[n] > counts[n].max() / 2) for n in named}
            assert min(onset, key=onset.get) == spec.label and len(set(onset.values())) == 2
        elif spec.task == "count":
            name = max(counts, key=lambda n: counts[n].sum())
            on = counts[name] > counts[name].max() / 2  # (F,) the square is on screen
            flashes = int(on[0]) + int((on[1:] & ~on[:-1]).sum())
            assert flashes == {"two": 2, "three": 3}[spec.label], spec
        else:
            first = max(PALETTE, key=lambda n: counts[n][0])
            last = max(PALETTE, key=lambda n: counts[n][-1])
            assert last == spec.label and first != last


def test_generate_is_deterministic(tmp_path, small_set):
    out, cfg, specs, frames, _ = small_set
    again = tmp_path / "again"
    generate(again, cfg)
    for name in ("qa.json", "labels.json", "config.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    for spec in specs:
        assert np.array_equal(decode(again / "videos" / f"{spec.video_id}.mp4"), frames[spec.video_id])
    generate(tmp_path / "other", dataclasses.replace(cfg, seed=cfg.seed + 1))
    other_frames = decode(tmp_path / "other" / "videos" / f"{specs[0].video_id}.mp4")
    assert not np.array_equal(other_frames, frames[specs[0].video_id])


def test_more_videos_keep_the_first_ones():
    few = plan_videos(SyntheticConfig(num_videos=4, tasks=("direction",)))
    many = plan_videos(SyntheticConfig(num_videos=10, tasks=("direction",)))
    assert many[:4] == few


def test_failed_run_leaves_no_half_written_files(tmp_path, monkeypatch):
    real_render, calls = synthetic.render_frames, []

    def render_then_die(scene):
        calls.append(scene)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the run were killed mid-way
        return real_render(scene)

    monkeypatch.setattr(synthetic, "render_frames", render_then_die)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, SyntheticConfig(**SMALL))
    assert not (tmp_path / "qa.json").exists() and not (tmp_path / "labels.json").exists()
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["order_0000.mp4", "order_0001.mp4"]


def test_cli_writes_and_summarises(tmp_path):
    flags = ["--num-videos", "2", "--tasks", "direction", "--num-frames", "8", "--size", "32"]
    result = CliRunner().invoke(synthetic_command(), [str(tmp_path / "cli out"), *flags])
    summary = result.output.strip()
    assert result.exit_code == 0 and "wrote 2 videos (direction: 2)" in summary and "\n" not in summary
    assert len(json.loads((tmp_path / "cli out" / "qa.json").read_text())) == 2
    bad = CliRunner().invoke(synthetic_command(), [str(tmp_path / "bad"), "--num-videos", "3"])
    assert bad.exit_code == 2 and bad.stderr.strip() == (
        "error: num_videos must be even and >= 2 (each video has a twin), got 3")


# ----------------------------------------------------------------------------- twins


def frame_hashes(frames: np.ndarray) -> list[str]:
    return sorted(hashlib.sha1(frame.tobytes()).hexdigest() for frame in frames)


@pytest.mark.parametrize("task", TEMPORAL_TASKS)
@pytest.mark.parametrize("num_frames", [16, 13])
def test_twins_are_frame_permutations_with_opposite_labels(task, num_frames):
    cfg = SyntheticConfig(num_videos=20, tasks=(task,), num_frames=num_frames, size=64, seed=7)
    planned = {v.spec.video_id: v for v in plan_videos(cfg)}
    for video in planned.values():
        twin = planned[video.twin_id]
        assert twin.twin_id == video.spec.video_id
        assert twin.spec.label != video.spec.label and twin.spec.question == video.spec.question
        mine, theirs = render_frames(video.scene), render_frames(twin.scene)
        assert not np.array_equal(mine, theirs)
        # Same bag of frames: every time-agnostic feature, the time-average included, is equal.
        assert frame_hashes(mine) == frame_hashes(theirs)


def test_twins_stay_permutations_after_encoding(small_set):
    """Intra-only, constant-QP encoding: a decoded frame depends on that frame alone."""
    out, cfg, specs, frames, _ = small_set
    labels = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    for row in labels:
        mine, theirs = frames[row["video_id"]], frames[row["twin_id"]]
        assert np.abs(mine.mean(0, dtype=np.float64) - theirs.mean(0, dtype=np.float64)).max() < 1.0


# ----------------------------------------------------------------------------- the probe


def frame_features(frames: np.ndarray, cells: int = 2, levels: int = 3) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, cells*cells*(3 + levels**3)): per-cell mean RGB + colour histogram."""
    num_frames, height, width, _ = frames.shape
    bins = levels**3
    level = frames.astype(np.int64) * levels // 256  # (F, H, W, 3)
    code = (level[..., 0] * levels + level[..., 1]) * levels + level[..., 2]  # (F, H, W)
    cell = (np.arange(height)[:, None] * cells // height) * cells + np.arange(width) * cells // width
    flat = (np.arange(num_frames)[:, None, None] * cells * cells + cell) * bins + code
    hist = np.bincount(flat.ravel(), minlength=num_frames * cells * cells * bins)
    hist = hist.reshape(num_frames, cells * cells, bins) / (height * width / cells**2)
    rgb = frames.reshape(num_frames, cells, height // cells, cells, width // cells, 3).mean(axis=(2, 4))
    return np.concatenate([rgb.reshape(num_frames, cells * cells, 3) / 255, hist], -1).reshape(num_frames, -1)


def time_averaged(features: np.ndarray) -> np.ndarray:
    return features.mean(0)  # (D,)


def time_aware(features: np.ndarray) -> np.ndarray:
    return np.concatenate([quarter.mean(0) for quarter in np.array_split(features, 4)])  # (4D,)


def pair_probe_accuracy(x: np.ndarray, labels: list, twin_labels: list, folds=10, ridge=10.0) -> float:
    """Held-out accuracy of "label or twin's label?" from features x (V, D); rows come in twin pairs."""
    classes = sorted(set(labels) | set(twin_labels))
    y = np.eye(len(classes))[[classes.index(label) for label in labels]]  # (V, C)
    pair = np.arange(len(labels)) // 2
    score = 0.0
    for fold in range(folds):
        test, train = pair % folds == fold, pair % folds != fold
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        x_train, x_test = (x[train] - mean) / std, (x[test] - mean) / std
        # Ridge in its dual form: fewer videos than features.
        gram = x_train @ x_train.T + ridge * np.eye(train.sum())  # (V_train, V_train)
        alpha = np.linalg.solve(gram, y[train] - y[train].mean(0))
        scores = x_test @ (x_train.T @ alpha)  # (V_test, C)
        for row, label, twin in zip(scores, np.array(labels)[test], np.array(twin_labels)[test]):
            margin = row[classes.index(label)] - row[classes.index(twin)]
            score += 0.5 if abs(margin) < 1e-9 else float(margin > 0)  # a tie is a coin flip
    return score / len(labels)


@pytest.fixture(scope="module")
def probe_set(tmp_path_factory):
    """40 twin pairs per task, encoded and decoded: the probe sees what a model would."""
    out = tmp_path_factory.mktemp("probe")
    cfg = SyntheticConfig(num_videos=80, tasks=TEMPORAL_TASKS, num_frames=16, size=64, seed=11)
    specs = generate(out, cfg)
    label_of = {s.video_id: s.label for s in specs}
    planned = plan_videos(cfg)
    rows = {}
    for video in planned:
        features = frame_features(decode(out / "videos" / f"{video.spec.video_id}.mp4"))  # (F, D)
        rows.setdefault(video.spec.task, []).append((video, features, label_of[video.twin_id]))
    return rows


@pytest.mark.parametrize("task", TEMPORAL_TASKS)
def test_probe_time_average_is_at_chance_time_order_is_not(probe_set, task):
    rows = probe_set[task]
    labels = [video.spec.label for video, _, _ in rows]
    twin_labels = [twin for _, _, twin in rows]
    averaged = np.stack([time_averaged(f) for _, f, _ in rows])
    ordered = np.stack([time_aware(f) for _, f, _ in rows])
    assert pair_probe_accuracy(averaged, labels, twin_labels) <= 0.65
    assert pair_probe_accuracy(ordered, labels, twin_labels) >= 0.9


def leaky_scene(video):
    """The honest scene with one classic mistake that lets the time-average reveal the label."""
    scene, last = video.scene, video.scene.num_frames
    if video.spec.task == "order":  # both squares stay to the end: the first one dominates
        squares = [dataclasses.replace(s, visible=(s.visible[0], last)) for s in scene.squares]
    elif video.spec.task == "color_change":  # the new colour is on screen for 2/3 of the time
        squares = [dataclasses.replace(s, change=(last // 3, last // 3)) for s in scene.squares]
    elif video.spec.task == "count":  # every flash equally long: three flashes are on screen longer
        length = 3 * (last // 12)  # the two-flash video's flash length
        squares = [dataclasses.replace(s, visible=(s.visible[0], s.visible[0] + length)) for s in scene.squares]
    else:  # the square vanishes before the end: only where it started stays in the average
        squares = [dataclasses.replace(s, visible=(0, 3 * last // 4)) for s in scene.squares]
    return dataclasses.replace(scene, squares=tuple(squares))


@pytest.mark.parametrize("task", TEMPORAL_TASKS)
def test_probe_catches_a_leaky_generator(task):
    cfg = SyntheticConfig(num_videos=80, tasks=(task,), num_frames=16, size=64, seed=11)
    planned = plan_videos(cfg)
    label_of = {v.spec.video_id: v.spec.label for v in planned}
    averaged = np.stack([time_averaged(frame_features(render_frames(leaky_scene(v)))) for v in planned])
    labels = [v.spec.label for v in planned]
    twin_labels = [label_of[v.twin_id] for v in planned]
    assert pair_probe_accuracy(averaged, labels, twin_labels) >= 0.75


def test_the_still_color_task_keeps_its_earlier_name_as_an_alias():
    from redvillm.data.synthetic import CONTROL_TASKS, TASKS

    assert CONTROL_TASKS == ("still_color",) and TASKS.index("still_color") == 3  # its place keeps its pixels
    assert SyntheticConfig(num_videos=2, tasks=("colour", "order")).tasks == ("still_color", "order")
