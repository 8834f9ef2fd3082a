"""Stage-one benchmark: does ``run_extract`` cost more than decoding plus encoding?

    python bench/extract.py [--videos 24] [--frames 32] [--workers 2] [--out-dir DIR] [--json PATH]

Measured in one run, on synthetic h264 videos and a tiny random-weight LLaVA made big enough
that encoding is real work (sizes in BENCH below):

    decode    DecodePool.imap over every video (worker start included), results discarded
    encode    encode_frames over the same frames, decoded beforehand and held in memory
    pipeline  run_extract into a fresh OUT: model load, workers, decode, encode, HDF5 writes

    ratio = pipeline / (decode + encode); goal <= 1.05. Nothing is subtracted from the pipeline:
    the model load it includes is measured on its own and printed beside it.

Then peak RSS of run_extract over 10 and over 100 small videos, each run in a fresh subprocess:
the parent's own peak and the largest decode worker's (getrusage SELF / CHILDREN); goal: flat.
torch.set_num_threads(--threads) in every process that encodes; decode workers use 1 thread.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from redvillm.data.synthetic import SyntheticConfig, generate  # noqa: E402
from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava  # noqa: E402
from redvillm.extract.config import ExtractConfig  # noqa: E402
from redvillm.extract.decode import DecodeJob, DecodePool, DecodeSettings  # noqa: E402
from redvillm.extract.pipeline import encode_frames, run_extract  # noqa: E402
from redvillm.extract.videos import find_videos  # noqa: E402
from redvillm.families.registry import load_family  # noqa: E402

# Chosen so that decode and encode cost the same order of time on 2 CPU cores.
BENCH = dict(
    video=dict(size=336, num_frames=64, fps=8),  # decoded at 336 px, resized+cropped to 224
    model=TinyLlavaConfig(image_size=224, patch_size=16, vision_hidden=128, vision_layers=4, vision_heads=4),
    rss_video=dict(size=96, num_frames=16, fps=8),  # small: 100 of them stay quick
    rss_frames=8,
    rss_counts=(10, 100),
)
GOAL_RATIO = 1.05


def make_videos(root: Path, count: int, video: dict) -> Path:
    """count synthetic mp4 files (one task: count must be even, each video has a twin)."""
    generate(root, SyntheticConfig(num_videos=count, tasks=("direction",), **video))
    return root / "videos"


def extract_config(videos: Path, out: Path, model: Path, args) -> ExtractConfig:
    return ExtractConfig(str(videos), str(out), model=str(model), num_frames=args.frames, device="cpu",
                         dtype="float32", decode_workers=args.workers, overwrite=True)


def decode_all(cfg: ExtractConfig, settings: DecodeSettings, keep: bool):
    """All videos through a fresh DecodePool: (seconds, frames, first-result latency, kept frames)."""
    jobs = [DecodeJob(v.video_id, v.path) for v in find_videos(cfg.videos)]
    kept, frames, startup = [], 0, None
    started = time.perf_counter()
    with DecodePool(settings, cfg.decode_workers, cfg.decode_timeout, cfg.recycle_after) as pool:
        for result in pool.imap(jobs):
            if result.error is not None:
                raise RuntimeError(f"{result.job.path}: {result.error}")
            if startup is None:  # spawn + imports: time to the first result minus its own decode
                startup = time.perf_counter() - started - result.seconds
            frames += result.frames.shape[0]
            if keep:
                kept.append(result.frames)
    return time.perf_counter() - started, frames, startup, kept


def measure_throughput(root: Path, model: Path, args) -> dict:
    videos = make_videos(root / "synthetic", args.videos, BENCH["video"])
    cfg = extract_config(videos, root / "pipeline" / "cache.h5", model, args)
    (root / "pipeline").mkdir()
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)

    started = time.perf_counter()
    family = load_family(cfg.model)
    encoder = family.load_frame_encoder(device, dtype)
    preprocess = family.frame_preprocess()
    load_s = time.perf_counter() - started
    settings = DecodeSettings(cfg.num_frames, cfg.sampling, cfg.short_videos, preprocess)

    _, _, _, clips = decode_all(cfg, settings, keep=True)  # untimed: the encoder's input
    decode_s, frames, startup_s, _ = decode_all(cfg, settings, keep=False)

    started = time.perf_counter()
    for clip in clips:  # (T, 3, h, w) uint8
        encode_frames(encoder, torch.from_numpy(clip), cfg.batch_size, device, dtype, preprocess)
    encode_s = time.perf_counter() - started
    shape = f"T={cfg.num_frames} N={encoder.num_patches} D={encoder.hidden_size}"
    del clips, encoder  # the pipeline loads its own

    started = time.perf_counter()
    summary = run_extract(cfg)
    pipeline_s = time.perf_counter() - started
    if summary.extracted != args.videos or summary.frames != frames:
        raise RuntimeError(f"run_extract cached {summary.extracted} videos, {summary.frames} frames")
    return dict(frames=frames, tokens=shape, load_s=load_s, worker_start_s=startup_s,
                decode_s=decode_s, encode_s=encode_s, pipeline_s=pipeline_s,
                ratio=pipeline_s / (decode_s + encode_s))


def measure_rss(root: Path, model: Path, args) -> dict:
    """Peak RSS of run_extract over the first n of 100 small videos, one fresh process per n."""
    videos = make_videos(root / "rss", max(BENCH["rss_counts"]), BENCH["rss_video"])
    paths = sorted(videos.glob("*.mp4"))
    peaks = {}
    for n in BENCH["rss_counts"]:
        listing = root / f"rss-{n}.txt"
        listing.write_text("".join(f"{p}\n" for p in paths[:n]))
        out = root / f"rss-{n}"
        out.mkdir()
        command = [sys.executable, __file__, "--rss-child", str(listing), str(out / "cache.h5"), str(model),
                   "--frames", str(BENCH["rss_frames"]), "--workers", str(args.workers),
                   "--threads", str(args.threads)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        peaks[n] = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks


def rss_child(args) -> None:
    """In a fresh process: one run_extract, then its peak RSS and its largest worker's, in MiB."""
    cfg = ExtractConfig(args.videos_list, args.out, model=args.model, num_frames=args.frames, device="cpu",
                        dtype="float32", decode_workers=args.workers)
    summary = run_extract(cfg)
    mib = lambda who: resource.getrusage(who).ru_maxrss / 1024  # noqa: E731 - Linux: KiB
    print(json.dumps(dict(videos=summary.extracted, parent_mib=mib(resource.RUSAGE_SELF),
                          worker_mib=mib(resource.RUSAGE_CHILDREN), seconds=summary.seconds)))


def report(results: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    t = results["throughput"]
    frames = t["frames"]
    table = Table(title=f"redvillm-extract: {args.videos} videos x {args.frames} frames, {t['tokens']}, "
                        f"{args.workers} decode workers, torch threads {args.threads}")
    for column in ("measure", "seconds", "frames/s", "note"):
        table.add_column(column, justify="left" if column in ("measure", "note") else "right")
    table.add_row("model load", f"{t['load_s']:.2f}", "", "load_family + load_frame_encoder (in the pipeline too)")
    table.add_row("worker start", f"{t['worker_start_s']:.2f}", "", "first result latency minus its decode")
    table.add_row("decode alone", f"{t['decode_s']:.2f}", f"{frames / t['decode_s']:.0f}", "DecodePool.imap")
    table.add_row("encode alone", f"{t['encode_s']:.2f}", f"{frames / t['encode_s']:.0f}", "encode_frames")
    table.add_row("decode + encode", f"{t['decode_s'] + t['encode_s']:.2f}",
                  f"{frames / (t['decode_s'] + t['encode_s']):.0f}", "the two unavoidable costs")
    table.add_row("pipeline", f"{t['pipeline_s']:.2f}", f"{frames / t['pipeline_s']:.0f}", "run_extract, all in")
    table.add_row("[bold]ratio", f"[bold]{t['ratio']:.3f}", "", f"pipeline / (decode + encode); goal <= {GOAL_RATIO}")
    rss = results["rss"]
    small, large = (rss[n] for n in BENCH["rss_counts"])
    for who in ("parent", "worker"):
        growth = large[f"{who}_mib"] / small[f"{who}_mib"]
        table.add_row(f"peak RSS {who}", "", "", f"{small[f'{who}_mib']:.0f} MiB ({small['videos']} videos) -> "
                      f"{large[f'{who}_mib']:.0f} MiB ({large['videos']} videos): x{growth:.2f}; goal ~1")
    table.add_row("wall time", f"{results['seconds']:.0f}", "", "whole benchmark, setup included")
    Console().print(table)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=24, help="even: each synthetic video has a twin")
    parser.add_argument("--frames", type=int, default=32, help="T sampled per video")
    parser.add_argument("--workers", type=int, default=2, help="decode worker processes")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--out-dir", type=Path, default=None, help="keep videos, model and caches here")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--rss-child", nargs=3, metavar=("VIDEOS_LIST", "OUT", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.videos < 2 or args.videos % 2:
        parser.error("--videos must be even and >= 2")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        args.videos_list, args.out, args.model = args.rss_child
        return rss_child(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        root = args.out_dir or Path(tmp) / "run"
        root.mkdir(parents=True, exist_ok=False)  # fresh: every cache below is written from scratch
        model = build_tiny_llava(root / "tiny-llava", BENCH["model"])
        results = dict(throughput=measure_throughput(root, model, args), rss=measure_rss(root, model, args))
    results.update(seconds=time.perf_counter() - started, torch_threads=args.threads,
                   settings=dict(videos=args.videos, frames=args.frames, workers=args.workers,
                                 video=BENCH["video"], model=vars(BENCH["model"]), goal_ratio=GOAL_RATIO))
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
