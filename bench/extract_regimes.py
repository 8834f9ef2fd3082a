"""Stage one side by side: default settings vs every hand-tuned split vs a serial extractor.

    python bench/extract_regimes.py [--videos 4] [--frames 16] [--regimes decode-bound,encoder-bound]
                                    [--out-dir DIR] [--json PATH]

Two regimes, each on its own synthetic videos and tower (random weights; only speed matters):

    decode-bound   a tiny CLIP tower (64 wide, 2 layers) on 480 px, 20 s clips: decoding
                   dominates, as on a GPU box
    encoder-bound  a ViT-B/16-size CLIP tower (768 wide, 12 layers, 196 patches) on 224 px
                   clips: the encoder dominates, as on a CPU-only box

In each regime, every configuration runs in a fresh subprocess (its own torch threads and its
own CPU accounting: user and system seconds of the process and its decode workers):

    default        redvillm-extract's defaults (--decode-workers auto, threads follow the work)
    w=W t=N        --decode-workers W --threads N, for W, N in 1..CPUs (the hand-tuned grid;
                   w=2 t=1 on 2 CPUs is the previous default)
    serial         a Video-ChatGPT-style extractor: per video, decord reads the sampled frames in
                   one get_batch, the checkpoint's own image processor takes the frame list, one
                   forward of the same frame encoder; features saved with numpy; no overlap
    decode floor   decoding alone: the default decoders over the same videos, nothing encoded
                   or stored (what no extraction can beat)

Printed per regime: wall and CPU seconds of each, default / best hand-tuned (goal <= 1.10),
default / serial (goal < 1) and default / decode floor (goal <= 1.2 where decoding is the limit).
The w=1 and w=2.. rows at the same t are the scaling curve from one to every decode worker.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from redvillm.cli import command

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REGIMES = {
    "decode-bound": dict(video=dict(size=480, num_frames=160, fps=8),
                         tower=dict(image_size=224, patch_size=32, vision_hidden=64, vision_layers=2, vision_heads=4)),
    "encoder-bound": dict(video=dict(size=224, num_frames=48, fps=8),
                          tower=dict(image_size=224, patch_size=16, vision_hidden=768, vision_layers=12,
                                     vision_heads=12)),
}
GOAL_BEST, GOAL_SERIAL, GOAL_FLOOR = 1.10, 1.0, 1.2


def prepare(root: Path, regime: str, videos: int) -> tuple[Path, Path]:
    """The regime's videos and checkpoint, built once under root."""
    from redvillm.data.synthetic import SyntheticConfig, generate
    from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava

    spec, folder = REGIMES[regime], root / regime
    if not (folder / "videos").exists():
        generate(folder, SyntheticConfig(num_videos=videos, tasks=("direction",), **spec["video"]))
    if not (folder / "model").exists():
        build_tiny_llava(folder / "model", TinyLlavaConfig(**spec["tower"]))
    return folder / "videos", folder / "model"


def configurations(cpus: int) -> list[dict]:
    grid = [dict(name=f"w={w} t={t}", workers=w, threads=t) for w in range(1, cpus + 1) for t in range(1, cpus + 1)]
    return [dict(name="default"), *grid, dict(name="serial"), dict(name="decode floor")]


def run_child(spec: dict) -> dict:
    """One configuration in a fresh interpreter: {wall_s, user_s, sys_s} (decode workers included)."""
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{spec['name']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_configuration(spec: dict) -> None:
    started = time.perf_counter()
    if spec["name"] == "serial":
        serial_extract(Path(spec["videos"]), Path(spec["model"]), Path(spec["out"]), spec["frames"])
    elif spec["name"] == "decode floor":
        decode_only(Path(spec["videos"]), Path(spec["model"]), spec["frames"])
    else:
        from redvillm.extract.config import ExtractConfig
        from redvillm.extract.pipeline import run_extract

        flags = {} if spec["name"] == "default" else dict(decode_workers=spec["workers"], threads=spec["threads"])
        summary = run_extract(ExtractConfig(spec["videos"], spec["out"], model=spec["model"], num_frames=spec["frames"],
                                            device="cpu", **flags))
        if summary.failures:
            raise RuntimeError(summary.failures[0].reason)
    wall = time.perf_counter() - started
    _reap_forkserver()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps(dict(wall_s=wall, user_s=me.ru_utime + kids.ru_utime, sys_s=me.ru_stime + kids.ru_stime)))


def _reap_forkserver() -> None:
    """Decoders are the forkserver's children, reaped by it: its CPU time (theirs included) reaches
    RUSAGE_CHILDREN only once we have reaped it. multiprocessing stops it so only in its own tests."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is None:
        raise RuntimeError("this Python's forkserver cannot be stopped here: decoders' CPU time would be missed")
    stop()


def decode_only(videos: Path, model: Path, frames: int) -> None:
    """The default decoders (as many, the same settings) over every video; frames dropped."""
    import torch

    from redvillm.extract.cores import auto_decode_workers
    from redvillm.extract.decode import DecodeJob, DecodePool, DecodeSettings
    from redvillm.extract.videos import find_videos
    from redvillm.families.registry import load_family

    settings = DecodeSettings(frames, "uniform", "repeat", load_family(str(model)).frame_preprocess())
    jobs = [DecodeJob(v.video_id, v.path) for v in find_videos(str(videos))]
    with DecodePool(settings, auto_decode_workers(torch.device("cpu"))) as pool:
        for result in pool.imap(jobs):
            if result.error is not None:
                raise RuntimeError(f"{result.job.path}: {result.error}")


def serial_extract(videos: Path, model: Path, out: Path, frames: int) -> None:
    """The serial peer: decode, preprocess with the image processor, encode, save; one video at a time."""
    import decord
    import numpy as np
    import torch
    from transformers import AutoImageProcessor

    from redvillm.families.registry import load_family

    encoder = load_family(str(model)).load_frame_encoder(torch.device("cpu"), torch.float32)
    processor = AutoImageProcessor.from_pretrained(model)
    out.mkdir(parents=True)
    for path in sorted(videos.glob("*.mp4")):
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        indices = np.linspace(0, len(reader) - 1, frames).round().astype(int)
        clip = list(reader.get_batch(indices.tolist()).asnumpy())  # T x (H, W, 3) uint8
        pixels = processor(images=clip, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            tokens = encoder(pixels).to(torch.float16).numpy()  # (T, N, D)
        np.save(out / f"{path.stem}.npy", tokens)


def measure(root: Path, regime: str, videos: int, frames: int) -> dict:
    from redvillm.extract.cores import usable_cpus

    video_dir, model = prepare(root, regime, videos)
    rows = {}
    for spec in configurations(usable_cpus()):
        spec.update(videos=str(video_dir), model=str(model), frames=frames,
                    out=str(root / regime / f"out-{spec['name'].replace(' ', '_')}" / "cache.h5"))
        folder = Path(spec["out"]).parent
        shutil.rmtree(folder, ignore_errors=True)  # a kept --out-dir must not turn a run into a resume
        folder.mkdir(parents=True)
        if spec["name"] in ("serial", "decode floor"):
            spec["out"] = str(folder / "features")
        rows[spec["name"]] = run_child(spec)
    tuned = min((r for name, r in rows.items() if name.startswith("w=")), key=lambda r: r["wall_s"])
    best = next(name for name, r in rows.items() if r is tuned)
    return dict(rows=rows, best=best, default_vs_best=rows["default"]["wall_s"] / tuned["wall_s"],
                default_vs_serial=rows["default"]["wall_s"] / rows["serial"]["wall_s"],
                default_vs_floor=rows["default"]["wall_s"] / rows["decode floor"]["wall_s"],
                videos=videos, frames=frames)


def report(regime: str, result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{regime}: {result['videos']} videos, T={result['frames']}")
    for column in ("configuration", "wall s", "user s", "sys s"):
        table.add_column(column, justify="right")
    for name, row in result["rows"].items():
        mark = " (best)" if name == result["best"] else ""
        table.add_row(name + mark, f"{row['wall_s']:.1f}", f"{row['user_s']:.1f}", f"{row['sys_s']:.1f}")
    console = Console()
    console.print(table)
    console.print(f"default / best hand-tuned = {result['default_vs_best']:.2f} (goal <= {GOAL_BEST}); "
                  f"default / serial = {result['default_vs_serial']:.2f} (goal < {GOAL_SERIAL}); "
                  f"default / decode floor = {result['default_vs_floor']:.2f} (goal <= {GOAL_FLOOR} where decoding "
                  "is the limit)")


@command()
@click.option("--videos", default=4, show_default=True, help="videos per regime (even: each has a twin)")
@click.option("--frames", default=16, show_default=True, help="T sampled per video")
@click.option("--regimes", default=",".join(REGIMES), show_default=True, help="comma-separated subset")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="keep videos, models, caches here")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="also write the numbers")
@click.option("--child", default=None, hidden=True)
def main(videos: int, frames: int, regimes: str, out_dir: Path | None, json_path: Path | None,
         child: str | None) -> None:
    """Default settings vs hand-tuned splits vs a serial extractor, decode-bound and encoder-bound."""
    if child is not None:
        return run_configuration(json.loads(child))
    names = [r for r in regimes.split(",") if r]
    unknown = [r for r in names if r not in REGIMES]
    if unknown:
        raise click.BadParameter(f"unknown regime(s) {unknown}; choose from {list(REGIMES)}", param_hint="--regimes")
    root = out_dir or Path(tempfile.mkdtemp(prefix="redvillm-bench-regimes-"))
    results = {}
    for regime in names:
        results[regime] = measure(root, regime, videos, frames)
        report(regime, results[regime])
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
