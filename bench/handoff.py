"""Handing a video's decoded frames from a decoder process to the encoder's: pipe vs shared memory.

    python bench/handoff.py [--frames 100] [--sizes 224x224,1920x1080] [--rounds 5] [--json PATH]

A spawned process plays the decoder: per round it writes T frames of uint8 (a random source
array, made once, not timed) into its output array and hands them over, as a decode worker does:

    pipe      np.empty output, the array sent down a multiprocessing Pipe (pickled, as before)
    shared    extract/handoff.py: output in a FrameBlock, only (name, shape, dtype) sent; the
              parent's take() maps the block (Linux) and removes its name

Timed in the parent, from sending the request to having dropped the array it got: the writing,
the hand-over, and freeing the memory (mapped shared pages, or the unpickled copy). 224x224 is what the workers send when they resize; source resolution
(1080p) what they send when the encoder's GPU resizes. Printed: median ms per video, GB/s.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import click
import numpy as np

from redvillm.cli import command

MODES = ("pipe", "shared")


def _decoder(conn) -> None:
    from redvillm.extract.handoff import FrameBlock, block_name

    sources: dict[tuple, np.ndarray] = {}
    while (request := conn.recv()) is not None:
        mode, shape = request
        if shape not in sources:
            sources[shape] = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        block = FrameBlock(block_name() if mode == "shared" else None)
        frames = block.allocate(shape)
        np.copyto(frames, sources[shape])  # what decode_video's chunks do
        ref = block.describe(frames)
        if ref is None:
            conn.send(frames)
        else:
            del frames
            block.close()
            conn.send(ref)


def measure(frames: int, sizes: list[tuple[int, int]], rounds: int) -> dict:
    from redvillm.extract.handoff import take

    parent, child = mp.get_context("spawn").Pipe()
    process = mp.get_context("spawn").Process(target=_decoder, args=(child,), daemon=True)
    process.start()
    results = {}
    try:
        for width, height in sizes:
            shape = (frames, height, width, 3)
            parent.send(("pipe", shape))  # warm-up: the source array is made here
            parent.recv()
            times = {mode: [] for mode in MODES}
            for _ in range(rounds):  # interleaved, so drift of the machine hits both alike
                for mode in MODES:
                    started = time.perf_counter()
                    parent.send((mode, shape))
                    got = parent.recv()
                    got = got if isinstance(got, np.ndarray) else take(got)
                    if got.shape != shape:
                        raise RuntimeError(f"{mode}: got {got.shape}, sent {shape}")
                    del got  # freeing the frames is the parent's work too
                    times[mode].append(time.perf_counter() - started)
            size = f"{width}x{height}"
            results[size] = {"bytes": int(np.prod(shape)),
                             **{mode: 1e3 * statistics.median(times[mode]) for mode in MODES}}
    finally:
        parent.send(None)
        process.join(timeout=30)
    return results


@command()
@click.option("--frames", type=click.IntRange(1), default=100, show_default=True, help="T: frames per video")
@click.option("--sizes", default="224x224,1920x1080", show_default=True, help="WxH frame sizes, comma-separated")
@click.option("--rounds", type=click.IntRange(1), default=5, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
def main(frames: int, sizes: str, rounds: int, json_path: Path | None) -> None:
    """Time the hand-over of one video's frames: pickled down a pipe vs shared memory."""
    from rich.console import Console
    from rich.table import Table

    parsed = [tuple(int(x) for x in size.lower().split("x")) for size in sizes.split(",")]
    results = measure(frames, parsed, rounds)
    table = Table(title=f"T={frames} uint8 frames, one video per hand-over: median ms of {rounds} (GB/s)")
    for column in ("frames", "MB", *MODES, "pipe / shared"):
        table.add_column(column, justify="right")
    for size, row in results.items():
        rate = {mode: row["bytes"] / row[mode] / 1e6 for mode in MODES}
        table.add_row(size, f"{row['bytes'] / 1e6:.0f}", *(f"{row[m]:.1f} ({rate[m]:.1f})" for m in MODES),
                      f"{row['pipe'] / row['shared']:.2f}x")
    Console().print(table)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
