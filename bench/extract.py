"""Stage-one benchmark: does ``run_extract`` cost more than decoding plus encoding?

(Defaults against hand-tuned splits, a serial extractor and decoding alone, decode-bound and
encoder-bound, with the scaling from one to every decoder: bench/extract_regimes.py.)

    python bench/extract.py [--videos 24] [--frames 32] [--workers 2] [--threads 2] [--rounds 3]
                            [--out-dir DIR] [--json PATH]

Measured in one run, on synthetic h264 videos (VIDEO) and a tiny random-weight LLaVA made big
enough that encoding is real work (MODEL):

    decode    DecodePool.imap over every video, worker start included, results discarded
    encode    encode_frames over the same frames, decoded beforehand and held in memory
    pipeline  run_extract into a fresh OUT: model load, workers, decode, encode, HDF5 writes

    ratio = pipeline / (decode + encode), goal <= 1.05. Nothing is subtracted from the pipeline;
    its model load is measured on its own (load_family + load_frame_encoder) and printed beside.
    The three are interleaved --rounds times; printed: the median of each, and of the rounds' ratios.

Then the cost of storage safety (STORAGE: random float16 tokens of a real video's shape), as
ratios measured in one run, the best of 2 x --rounds tries (the one least disturbed by other
work on the machine), files in the page cache (the worst case for
a relative overhead; a cold disk read only makes the checks cheaper by comparison):

    write  the first release's contiguous, unchecked dataset  vs  ShardWriter.add (one chunk per
           frame + fletcher32 + the finite check), each file closed and fsynced
    read   that contiguous dataset  vs  the checksummed one  vs  checksummed + the finite check
           (TokenCache.__getitem__)

Then the peak RSS of run_extract over 10 and over 100 small videos (RSS_VIDEO), each in a fresh
subprocess: the process's own peak, the largest decode worker's, and the peak of their sum
(sampled every 50 ms; shared library pages count once per process). Goal: flat.
Every process that encodes uses torch.set_num_threads(--threads); decode workers use 1 thread
each (decode.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from redvillm.cli import command, config_from, friendly_errors, options_from
from redvillm.settings import setting

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Heavy modules are imported inside functions: where decode workers are spawned (no forkserver),
# spawn re-imports this file in each of them.

VIDEO = dict(size=336, num_frames=64, fps=8)  # decoded at 336 px, resized + cropped to 224
# Penultimate layer, as llava-1.5: the encoder runs 2 of the 3 layers. N=196 patches, D=128.
MODEL = dict(image_size=224, patch_size=16, vision_hidden=128, vision_layers=3, vision_heads=4)
RSS_VIDEO, RSS_FRAMES, RSS_COUNTS = dict(size=96, num_frames=16, fps=8), 8, (10, 100)
GOAL_RATIO = 1.05
STORAGE = dict(videos=4, shape=(100, 576, 1024))  # llava-1.5-7b at T = 100: 118 MB per video


@dataclasses.dataclass
class ExtractBench:
    """The benchmark's settings; every field is a flag."""

    videos: int = setting(24, "Synthetic videos; even: each has a twin.")
    frames: int = setting(32, "T sampled per video.")
    workers: int = setting(2, "Decode worker processes.")
    threads: int = setting(os.cpu_count() or 1, "torch intra-op threads.")
    rounds: int = setting(3, "Repeats of the three timings (medians printed).")
    out_dir: str | None = setting(None, "Keep videos, model and caches here (a new folder).", path=True)
    json: str | None = setting(None, "Also write the numbers to this file.", path=True)
    storage_only: bool = setting(False, "Only the storage safety costs.")

    def __post_init__(self):
        if self.videos < 2 or self.videos % 2:
            raise ValueError("--videos must be even and >= 2")
        if min(self.frames, self.workers, self.threads, self.rounds) < 1:
            raise ValueError("--frames, --workers, --threads and --rounds must be >= 1")


def make_videos(root: Path, count: int, video: dict) -> Path:
    """`count` synthetic mp4 files (one task; count is even: every video has a twin)."""
    from redvillm.data.synthetic import SyntheticConfig, generate

    generate(root, SyntheticConfig(num_videos=count, tasks=("direction",), **video))
    return root / "videos"


def make_config(videos: Path | str, out: Path | str, model: Path | str, frames: int, workers: int):
    from redvillm.extract.config import ExtractConfig

    return ExtractConfig(str(videos), str(out), model=str(model), num_frames=frames, device="cpu",
                         dtype="float32", decode_workers=workers)


def decode_all(cfg, settings, keep: bool) -> tuple[float, int, float, list]:
    """Every video through a fresh DecodePool: seconds, frames, worker start, the frames if kept."""
    from redvillm.extract.decode import DecodeJob, DecodePool
    from redvillm.extract.videos import find_videos

    jobs = [DecodeJob(v.video_id, v.path) for v in find_videos(cfg.videos)]
    kept, frames, worker_start = [], 0, None
    started = time.perf_counter()
    with DecodePool(settings, cfg.decode_workers, cfg.decode_timeout, cfg.recycle_after) as pool:
        for result in pool.imap(jobs):
            if result.error is not None:
                raise RuntimeError(f"{result.job.path}: {result.error}")
            if worker_start is None:  # spawn + imports: first result's latency minus its decode
                worker_start = time.perf_counter() - started - result.seconds
            frames += result.frames.shape[0]
            if keep:
                kept.append(result.frames)
    return time.perf_counter() - started, frames, worker_start, kept


def measure_throughput(root: Path, model: Path, args) -> dict:
    import torch

    from redvillm.extract.decode import DecodeSettings
    from redvillm.extract.pipeline import encode_frames, run_extract
    from redvillm.families.registry import load_family

    videos = make_videos(root / "synthetic", args.videos, VIDEO)
    cfg = make_config(videos, root / "unused.h5", model, args.frames, args.workers)
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)

    started = time.perf_counter()
    family = load_family(cfg.model)
    encoder = family.load_frame_encoder(device, dtype)
    preprocess = family.frame_preprocess()
    load_s = time.perf_counter() - started
    settings = DecodeSettings(cfg.num_frames, cfg.sampling, cfg.short_videos, preprocess)  # as run_extract
    _, _, _, clips = decode_all(cfg, settings, keep=True)  # untimed: the encoder's input

    rounds = []
    for i in range(args.rounds):  # interleaved, so slow drift of the machine hits all three alike
        decode_s, frames, worker_start_s, _ = decode_all(cfg, settings, keep=False)
        started = time.perf_counter()
        for clip in clips:  # (T, 3, h, w) uint8
            encode_frames(encoder, torch.from_numpy(clip), cfg.batch_size, device, dtype, preprocess)
        encode_s = time.perf_counter() - started
        (root / f"pipeline-{i}").mkdir()
        cfg = dataclasses.replace(cfg, output=str(root / f"pipeline-{i}" / "cache.h5"))
        started = time.perf_counter()
        summary = run_extract(cfg)  # loads its own encoder
        pipeline_s = time.perf_counter() - started
        if summary.extracted != args.videos or summary.frames != frames:
            raise RuntimeError(f"run_extract cached {summary.extracted} videos, {summary.frames} frames")
        rounds.append(dict(decode_s=decode_s, encode_s=encode_s, pipeline_s=pipeline_s,
                           worker_start_s=worker_start_s, ratio=pipeline_s / (decode_s + encode_s)))
    typical = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}  # ratio: median of ratios
    return dict(frames=frames, shape=f"T={cfg.num_frames} N={encoder.num_patches} D={encoder.hidden_size}",
                batch_size=cfg.batch_size, load_s=load_s, **typical, rounds=rounds)


def measure_storage(root: Path, args) -> dict:
    """Seconds per video to write and read tokens with and without the checksum and finite check."""
    import numpy as np

    tokens = np.random.default_rng(0).standard_normal(STORAGE["shape"], dtype=np.float32).astype(np.float16)
    rounds = []
    for i in range(2 * args.rounds):
        folder = root / f"storage-{i}"
        folder.mkdir()
        plain_w, plain = _timed(lambda: _write_plain(folder / "plain.h5", tokens))
        safe_w, safe = _timed(lambda: _write_safe(folder, tokens))
        rounds.append(dict(write_plain_s=plain_w, write_safe_s=safe_w, **_read_all(plain, safe)))
        shutil.rmtree(folder)
    best = {key: min(r[key] for r in rounds) for key in rounds[0]}
    per_video = {key: value / STORAGE["videos"] for key, value in best.items()}
    return dict(videos=STORAGE["videos"], shape=STORAGE["shape"], mb_per_video=tokens.nbytes / 1e6, tries=len(rounds),
                **per_video)


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _write_plain(path: Path, tokens) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for i in range(STORAGE["videos"]):
            f.create_dataset(f"videos/v{i}", data=tokens)
    _fsync(path)
    return path


def _write_safe(folder: Path, tokens) -> Path:
    from redvillm.cache import CacheInfo
    from redvillm.extract.store import ShardWriter

    t, n, d = tokens.shape
    info = CacheInfo("bench", "bench", None, {}, (224, 224), t, n, d, "uniform", "repeat", "float32", "bench")
    writer = ShardWriter(folder, 0, info, max_bytes=1 << 62, next_seq=0)
    for i in range(STORAGE["videos"]):
        writer.add(f"v{i}", tokens, {})
    return writer.close_shard()  # flush, close, fsync, rename


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _read_all(plain: Path, safe: Path) -> dict:
    import h5py

    from redvillm.cache import all_finite

    names = [f"v{i}" for i in range(STORAGE["videos"])]
    with h5py.File(plain, "r") as p, h5py.File(safe, "r") as s:
        for name in names:  # warm: both files in the page cache alike
            p["videos"][name][()], s["videos"][name][()]
        read_plain, _ = _timed(lambda: [p["videos"][name][()] for name in names])
        read_checksum, _ = _timed(lambda: [s["videos"][name][()] for name in names])
        read_checked, ok = _timed(lambda: [all_finite(s["videos"][name][()]) for name in names])
    assert all(ok)
    return dict(read_plain_s=read_plain, read_checksum_s=read_checksum, read_checked_s=read_checked)


def measure_rss(root: Path, model: Path, args) -> dict:
    """Peak RSS of run_extract over the first n of 100 small videos, one fresh process per n."""
    paths = sorted(make_videos(root / "rss", max(RSS_COUNTS), RSS_VIDEO).glob("*.mp4"))
    peaks = {}
    for n in RSS_COUNTS:
        listing = root / f"rss-{n}.txt"
        listing.write_text("".join(f"{p}\n" for p in paths[:n]))
        (root / f"rss-{n}").mkdir()
        command = [sys.executable, __file__, "--rss-child", str(listing), str(root / f"rss-{n}" / "cache.h5"),
                   str(model), "--workers", str(args.workers), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"peak RSS run over {n} videos failed:\n{done.stderr[-3000:]}")
        peaks[n] = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks


def rss_child_run(videos_list: str, out: str, model: str, args: ExtractBench) -> None:
    """In a fresh process: one run_extract; print its peak RSS, its workers' and their sum's (MiB).

    Not getrusage: Linux carries ru_maxrss across fork/vfork + exec, so a child started by a big
    process reports at least that process's peak. VmHWM in /proc/PID/status is per address space.
    """
    import threading

    from redvillm.extract.pipeline import run_extract

    workers, total, stop = {}, 0, threading.Event()

    def sample() -> None:  # workers come and go (recycling): poll them, 20 times a second
        nonlocal total
        while not stop.wait(0.05):
            rss = {pid: _status_kib(pid, "VmRSS") for pid in _decode_workers(os.getpid())}
            workers.update({pid: max(workers.get(pid, 0), _status_kib(pid, "VmHWM")) for pid in rss})
            total = max(total, _status_kib("self", "VmRSS") + sum(rss.values()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary = run_extract(make_config(videos_list, out, model, RSS_FRAMES, args.workers))
    stop.set()
    sampler.join()
    print(json.dumps(dict(videos=summary.extracted, parent_mib=_status_kib("self", "VmHWM") / 1024,
                          worker_mib=max(workers.values(), default=0) / 1024, total_mib=total / 1024,
                          seconds=summary.seconds)))


def _status_kib(pid, field: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # the process has just exited
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(field + ":")), 0)


def _decode_workers(parent: int) -> list[int]:
    """Pids of `parent`'s decode workers: the children of its forkserver (or, where decoders are
    spawned, its spawned children); the forkserver and the resource tracker are not counted."""
    workers = []
    for pid in _children(parent):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"forkserver" in command:
            workers += _children(pid)
        elif b"spawn_main" in command:
            workers.append(pid)
    return workers


def _children(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return pids


def report(results: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    _report_storage(results["storage"])
    if "throughput" not in results:
        return
    t, rss = results["throughput"], results["rss"]
    fps = lambda seconds: f"{t['frames'] / seconds:.0f}"
    table = Table(title=f"stage one: {args.videos} videos ({VIDEO['size']} px), {t['shape']}, batch "
                        f"{t['batch_size']}, decode workers {args.workers}, torch threads {args.threads}")
    for name in ("", "seconds", "frames/s", "note"):
        table.add_column(name, justify="right" if name in ("seconds", "frames/s") else "left")
    both = t["decode_s"] + t["encode_s"]
    table.add_row("model load", f"{t['load_s']:.2f}", "", "load_family + load_frame_encoder; inside pipeline")
    table.add_row("worker start", f"{t['worker_start_s']:.2f}", "", "spawn + imports; inside decode and pipeline")
    table.add_row("decode alone", f"{t['decode_s']:.2f}", fps(t["decode_s"]), "DecodePool.imap, results dropped")
    table.add_row("encode alone", f"{t['encode_s']:.2f}", fps(t["encode_s"]), "encode_frames, frames in memory")
    table.add_row("decode + encode", f"{both:.2f}", fps(both), "the two unavoidable costs")
    table.add_row("pipeline", f"{t['pipeline_s']:.2f}", fps(t["pipeline_s"]), "run_extract, nothing subtracted")
    goal = f"pipeline / (decode + encode); goal <= {GOAL_RATIO}"
    table.add_row("[bold]ratio", f"[bold]{t['ratio']:.3f}", "", goal)
    each = ", ".join(f"{r['ratio']:.3f}" for r in t["rounds"])
    table.add_row("ratio per round", "", "", f"{each} (above: their median; seconds: medians too)")
    small, large = (rss[n] for n in RSS_COUNTS)
    for who in ("parent", "worker", "total"):
        a, b = small[f"{who}_mib"], large[f"{who}_mib"]
        table.add_row(f"peak RSS {who}", "", "", f"{a:.0f} MiB ({small['videos']} videos) -> {b:.0f} MiB "
                      f"({large['videos']} videos): [bold]x{b / a:.2f}[/bold]; goal ~1")
    table.add_row("benchmark", f"{results['seconds']:.0f}", "", "wall time, setup included")
    before, after = results["load_average"]
    busy = "  [red]other work on this machine skews the timings" if before > 0.5 else ""
    table.add_row("load average", "", "", f"{before:.1f} before, {after:.1f} after (1 min){busy}")
    Console(width=max(Console().width, 118)).print(table)


def _report_storage(st: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"storage safety: {st['videos']} videos of {st['shape']} float16 "
                        f"({st['mb_per_video']:.0f} MB each), page cache warm, best of {st['tries']} tries")
    for name in ("", "ms per video", "MB/s", "vs unchecked"):
        table.add_column(name, justify="left" if not name else "right")
    rows = [("write, contiguous, unchecked (v1)", "write_plain_s", "write_plain_s"),
            ("write, chunked + fletcher32 + finite check", "write_safe_s", "write_plain_s"),
            ("read, contiguous, unchecked (v1)", "read_plain_s", "read_plain_s"),
            ("read, fletcher32 verified", "read_checksum_s", "read_plain_s"),
            ("read, fletcher32 + finite check", "read_checked_s", "read_plain_s")]
    for name, key, base in rows:
        table.add_row(name, f"{st[key] * 1e3:.1f}", f"{st['mb_per_video'] / st[key]:.0f}",
                      f"[bold]x{st[key] / st[base]:.2f}")
    Console(width=max(Console().width, 118)).print(table)


@command(help=__doc__.split("\n\n")[0])
@options_from(ExtractBench)
@click.option("--rss-child", nargs=3, hidden=True, default=None)  # LIST OUT MODEL: one peak-RSS run (measure_rss)
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, rss_child: tuple[str, str, str] | None, **flags) -> None:
    args = config_from(ctx, ExtractBench, config_file, **flags)
    import torch

    torch.set_num_threads(args.threads)
    if rss_child:
        return rss_child_run(*rss_child, args)
    from redvillm.cli import quiet_libraries
    from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava

    quiet_libraries()  # as redvillm-extract
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        root = Path(args.out_dir) if args.out_dir else Path(tmp) / "run"
        root.mkdir(parents=True)  # must be new: every cache below is written from scratch
        results = dict(storage=measure_storage(root, args))
        if not args.storage_only:
            model = build_tiny_llava(root / "tiny-llava", TinyLlavaConfig(**MODEL))
            results.update(throughput=measure_throughput(root, model, args), rss=measure_rss(root, model, args))
    results.update(seconds=time.perf_counter() - started, load_average=(load_before, os.getloadavg()[0]),
                   torch_threads=args.threads, videos=args.videos,
                   frames=args.frames, workers=args.workers, video=VIDEO, model=MODEL, goal_ratio=GOAL_RATIO)
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
