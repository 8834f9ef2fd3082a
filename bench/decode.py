"""Reading the sampled frames: stage one's chunks vs one get_batch vs seek-free reading.

    python bench/decode.py [--videos 3] [--seconds 20] [--fps 30] [--keyint 250] [--frames 16,100,300]
                           [--rounds 3] [--json PATH]

Real videos are long-GOP h264 (a keyframe every few seconds), unlike the synthetic task videos
(every frame a keyframe, so any strategy is cheap). This writes --videos 640x480 clips of a
scrolling random texture with x264 at --keyint, then times, per T in --frames, each way of
reading the T uniformly sampled frames (decord, one thread, a fresh reader each time):

    chunks of 16 what extract/decode.py does (DecodeSettings.chunk): get_batch over 16 indices
                 at a time (bounds a worker's memory at 4K)
    one batch    a single get_batch of all T indices (the plain way; the reference)
    sequential   no seek at all: skip_frames to the next sampled index, then next()

Every strategy must return the same frames (checked); printed: best-of-rounds wall and CPU ms
per video (CPU: user + system seconds of this process, less sensitive to a busy machine) and
the ratios to one batch.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

import click

import numpy as np

from redvillm.cli import command
from redvillm.extract.decode import DecodeSettings

CHUNK = DecodeSettings.chunk


def write_clip(path: Path, seconds: int, fps: int, keyint: int, seed: int) -> None:
    import av

    frames, height, width = seconds * fps, 480, 640
    texture = np.random.default_rng(seed).integers(0, 256, (height, width + frames, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(keyint), "crf": "23"}
        for i in range(frames):
            image = np.ascontiguousarray(texture[:, i : i + width])  # scrolls one pixel per frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _reader(path: Path):
    import decord

    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def one_batch(path: Path, indices: list[int]) -> np.ndarray:
    return _reader(path).get_batch(indices).asnumpy()


def chunked(path: Path, indices: list[int]) -> np.ndarray:
    reader = _reader(path)
    return np.concatenate([reader.get_batch(indices[s : s + CHUNK]).asnumpy() for s in range(0, len(indices), CHUNK)])


def sequential(path: Path, indices: list[int]) -> np.ndarray:
    reader, frames, position = _reader(path), [], 0
    for index in indices:
        if index < position:  # a repeated index (T above the frame count)
            frames.append(frames[-1])
            continue
        if index > position:
            reader.skip_frames(index - position)
        frames.append(reader.next().asnumpy())
        position = index + 1
    return np.stack(frames)


STRATEGIES = {"chunks of 16": chunked, "one batch": one_batch, "sequential": sequential}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(paths: list[Path], frames: list[int], rounds: int) -> dict:
    """{T: {strategy: {"wall": ms, "cpu": ms}}} per video, best of rounds."""
    from redvillm.extract.sampling import sample_indices

    results = {}
    for count in frames:
        best = {name: {"wall": float("inf"), "cpu": float("inf")} for name in STRATEGIES}
        for _ in range(rounds):  # interleaved, so drift of the machine hits every strategy alike
            total = {name: {"wall": 0.0, "cpu": 0.0} for name in STRATEGIES}
            for path in paths:
                indices = sample_indices(len(_reader(path)), count, "uniform", "repeat").tolist()
                reference = None
                for name, read in STRATEGIES.items():
                    wall, cpu = time.perf_counter(), _cpu()
                    got = read(path, indices)
                    total[name]["wall"] += time.perf_counter() - wall
                    total[name]["cpu"] += _cpu() - cpu
                    if reference is None:
                        reference = got
                    elif not np.array_equal(got, reference):
                        raise RuntimeError(f"{name} read other frames than chunks of 16 from {path} at T={count}")
            for name in STRATEGIES:
                for kind in ("wall", "cpu"):
                    best[name][kind] = min(best[name][kind], 1e3 * total[name][kind] / len(paths))
        results[count] = best
    return results


@command()
@click.option("--videos", default=3, show_default=True, help="clips written (all are read and checked)")
@click.option("--seconds", default=20, show_default=True)
@click.option("--fps", default=30, show_default=True)
@click.option("--keyint", default=250, show_default=True, help="frames between keyframes (x264 -g)")
@click.option("--frames", default="16,100,300", show_default=True, help="T values, comma-separated")
@click.option("--rounds", default=3, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
def main(videos: int, seconds: int, fps: int, keyint: int, frames: str, rounds: int, json_path: Path | None) -> None:
    """Time three ways of reading a video's sampled frames with decord."""
    from rich.console import Console
    from rich.table import Table

    root = Path(tempfile.mkdtemp(prefix="redvillm-bench-decode-"))
    paths = [root / f"clip{i}.mp4" for i in range(videos)]
    for i, path in enumerate(paths):
        write_clip(path, seconds, fps, keyint, seed=i)
    results = measure(paths, [int(t) for t in frames.split(",")], rounds)
    table = Table(title=f"{seconds} s 640x480 clips at {fps} fps, keyframe every {keyint}: ms per video, wall / "
                        f"CPU (best of {rounds}; ratio to one batch)")
    table.add_column("T", justify="right")
    for name in STRATEGIES:
        table.add_column(name, justify="right")
    for count, ms in results.items():
        base = ms["one batch"]
        table.add_row(str(count), *(f"{ms[n]['wall']:.0f} / {ms[n]['cpu']:.0f} ({ms[n]['wall'] / base['wall']:.2f}x / "
                                    f"{ms[n]['cpu'] / base['cpu']:.2f}x)" for n in STRATEGIES))
    Console().print(table)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
