"""Stage-two benchmark: what does training from the pooled cache save, and does it stay lean?

    python bench/train.py [--videos 50] [--frames 32] [--batch 8] [--workers 2] [--out-dir DIR] [--json PATH]

Measured in one run, on synthetic h264 videos cached by redvillm-extract with a tiny random-weight
LLaVA (sizes in BENCH below; B batch, T frames, N patches, D vision width):

    step, cache     the training step of run_train (train.loop._step: forward + backward + AdamW on
                    the adapter, LLM frozen) on B samples read from the pooled sidecar, collate included
    step, online    the same step with the vision encoder run online: encode_frames on each video's
                    T frames (decoded and resized beforehand, in memory) -> family.pool -> collate -> _step
                    ratio = online / cache: the per-step cost the cache removes
    finite checks   the cost of refusing NaN/inf: steps/s of run_train's loop (num_workers=0, so the
                    data-path check runs in the timed process: the worst case) with the checks and with
                    them switched off (PooledStore.nonfinite, train.loop._stop_if_nonfinite), interleaved
                    rounds, ratio = with / without; and the one-time check when pooling, per video, next
                    to reading + pooling that video
    loader          a loop built like run_train's (InstructionDataset + ResumableSampler + collate in a
                    DataLoader with --workers workers, a new iterator per epoch): time blocked in
                    next(batches) vs time in _step; the first batch (worker start) apart
    bytes/sample    what InstructionDataset.__getitem__ reads from the pooled sidecar vs what reading
                    the raw cache (TokenCache[video_id]) would: array bytes h5py returns, and bytes
                    read(2) by the process (/proc/self/io rchar, HDF5 metadata included)
    peak RSS        run_train(max_steps=--rss-steps) over 100 and 1000 questions about the same videos,
                    each in a fresh subprocess: the trainer's own peak (VmHWM), its largest DataLoader
                    worker's (getrusage CHILDREN), and the peak over the whole process tree of summed RSS
                    and of summed PSS (forked workers share the trainer's pages; PSS counts them once),
                    sampled from /proc (RSS every 20 ms, PSS every 0.5 s). Goal: flat; identical runs
                    differ by up to ~15 % (trainer 515..600 MiB seen at either size). run_train's own
                    ms/step is taken there too, as a check on the loop above.
torch.set_num_threads(--threads) in every process that trains; DataLoader workers use 1 thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from itertools import islice
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from redvillm.batching import VideoSample  # noqa: E402
from redvillm.cache import open_cache  # noqa: E402
from redvillm.train.annotations import read_instructions  # noqa: E402
from redvillm.data.synthetic import SyntheticConfig, generate  # noqa: E402
from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava  # noqa: E402
from redvillm.extract.config import ExtractConfig  # noqa: E402
from redvillm.extract.decode import DecodeSettings, decode_video  # noqa: E402
from redvillm.extract.pipeline import encode_frames  # noqa: E402
from redvillm.train.config import TrainConfig  # noqa: E402
from redvillm.train.data import ResumableSampler, TrainItem, collate_items  # noqa: E402
from redvillm.train import loop as train_loop  # noqa: E402
from redvillm.train.loop import run_train, setup  # noqa: E402  (run_train and its own setup)
from redvillm.cache import count_nonfinite  # noqa: E402
from redvillm.train.pooled import PooledStore  # noqa: E402

# Encoder as in bench/extract.py (N = 196, D = 128); a 2-layer LLM of width 128.
BENCH = dict(
    video=dict(size=224, fps=8),  # frames already at the model's 224 px: decode stays cheap
    model=TinyLlavaConfig(image_size=224, patch_size=16, vision_hidden=128, vision_layers=4, vision_heads=4,
                          text_hidden=128, text_layers=2),
    pooling="both",
    temporal_module="copy",
    online_steps=3,  # each encodes B x T frames
    loader_steps=30,
    rss_questions=(100, 1000),
)
POLL_S, PSS_EVERY = 0.02, 25  # process-tree sampling: VmRSS every 20 ms, PSS every 0.5 s
BIG = dict(name="llava-1.5-7b", T=100, N=576, D=1024)  # bytes per sample by arithmetic


def make_data(root: Path, model: Path, args) -> tuple[Path, Path, list[dict]]:
    """Synthetic videos cached by redvillm-extract: (videos dir, cache index, the generator's qa rows).

    Extraction runs in a subprocess: this process later forks DataLoader workers, and should
    be the size a trainer is when it does."""
    generate(root / "synthetic", SyntheticConfig(num_videos=args.videos, tasks=("direction",),
                                                 num_frames=args.frames, **BENCH["video"]))
    videos, cache = root / "synthetic" / "videos", root / "cache" / "cache.h5"
    cache.parent.mkdir()
    cfg = extract_config(videos, cache, model, args)
    done = subprocess.run([sys.executable, "-m", "redvillm.extract", cfg.videos, cfg.output, "--model", cfg.model,
                           "--num-frames", str(cfg.num_frames), "--device", cfg.device, "--dtype", cfg.dtype],
                          capture_output=True, text=True)
    if done.returncode != 0 or len(open_cache(cache)) != args.videos:
        raise RuntimeError(f"redvillm-extract failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return videos, cache, json.loads((root / "synthetic" / "qa.json").read_text())


def extract_config(videos: Path, cache: Path, model: Path, args) -> ExtractConfig:
    return ExtractConfig(str(videos), str(cache), model=str(model), num_frames=args.frames, device="cpu",
                         dtype="float32")


def write_questions(path: Path, qa: list[dict], count: int) -> Path:
    """`count` rows over the same videos: every video gets count / videos reworded questions."""
    rows = [dict(qa[k % len(qa)]) for k in range(count)]
    for k, row in enumerate(rows):
        row["q"] = f"{row['q']} (question {k // len(qa)})"
    path.write_text(json.dumps(rows))
    return path


def train_config(cache: Path, annotations: Path, out: Path, model: Path, args, **overrides) -> TrainConfig:
    return TrainConfig(str(cache), str(annotations), str(out), model=str(model), pooling=BENCH["pooling"],
                       temporal_module=BENCH["temporal_module"], batch_size=args.batch, lr=1e-4, device="cpu",
                       dtype="float32", num_workers=args.workers, **overrides)


class Trainer:
    """run_train's own setup (train.loop.setup), with its step and data loaders to time."""

    def __init__(self, cfg: TrainConfig):
        self.run = setup(cfg)
        self.cfg, self.device, self.family, self.llm = cfg, self.run.device, self.run.family, self.run.llm
        self.dataset = self.run.dataset
        self.instructions, self.pooled = self.dataset.instructions, self.dataset.pooled
        self.llm.adapter.train()
        self.collate = partial(collate_items, batcher=self.llm.batcher)

    def step(self, batch) -> float:
        return self.run.step([batch], 1)

    def loader(self, num_workers: int) -> tuple[DataLoader, ResumableSampler]:
        sampler = ResumableSampler(self.dataset, 1, 0, self.cfg.seed)
        loader = DataLoader(self.dataset, batch_size=self.cfg.batch_size, sampler=sampler, num_workers=num_workers,
                            collate_fn=self.collate, persistent_workers=False)
        return loader, sampler


def timed(fn, *a):
    started = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - started, out


def online_samples(trainer: Trainer, videos: Path, cache: Path, model: Path, rows: list[int], args):
    """A function giving the rows' samples as training without a cache would: the vision encoder
    on each video's T frames (decoded and resized here, once), then the family's pooling."""
    cfg = extract_config(videos, cache, model, args)  # the settings the cache was made with
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    encoder = trainer.family.load_frame_encoder(device, dtype)
    preprocess = trainer.family.frame_preprocess()
    settings = DecodeSettings(cfg.num_frames, cfg.sampling, cfg.short_videos, preprocess)
    instructions = [trainer.instructions[i] for i in rows]
    clips = [torch.from_numpy(decode_video(videos / f"{i.video_id}.mp4", settings)[0]) for i in instructions]
    chats = [trainer.llm.chat.encode(i.question, i.answer) for i in instructions]

    def encode() -> list[TrainItem]:
        samples = []
        for clip, chat in zip(clips, chats):  # clip: (T, 3, h, w) uint8
            tokens = encode_frames(encoder, clip, cfg.batch_size, device, dtype, preprocess)  # (T, N, D) fp16
            sample = VideoSample(chat, *trainer.family.pool(torch.from_numpy(tokens)))  # (T, D), (N, D)
            samples.append(TrainItem("online", sample, None))
        return samples

    return encode, f"T={clips[0].shape[0]} N={encoder.num_patches} D={encoder.hidden_size}"


def measure_steps(trainer: Trainer, videos: Path, cache: Path, model: Path, args) -> dict:
    """ms per step: pooled tokens from the sidecar vs the encoder run online on the same B videos."""
    first = {}
    for index, instruction in enumerate(trainer.instructions):
        first.setdefault(instruction.video_id, index)
    rows = list(first.values())[: args.batch]  # one question on each of B videos
    cached_samples = [trainer.dataset[i] for i in rows]
    encode, shape = online_samples(trainer, videos, cache, model, rows, args)
    drift = max(float((a.sample.temporal - b.sample.temporal).abs().max()) for a, b in zip(cached_samples, encode()))
    scale = max(float(s.sample.temporal.abs().max()) for s in cached_samples)
    if drift > 1e-2 * scale:  # the warm-up doubles as a check that both paths see the same tokens
        raise RuntimeError(f"online pooled tokens differ from the sidecar's by {drift} (scale {scale})")
    trainer.step(trainer.collate(cached_samples))  # warm-up
    cached, online, encoding = [], [], []
    every = max(1, args.steps // BENCH["online_steps"])
    for i in range(max(args.steps, BENCH["online_steps"])):  # interleaved: both see the same machine load
        cached.append(timed(lambda: trainer.step(trainer.collate(cached_samples)))[0])
        if i % every == 0 and len(online) < BENCH["online_steps"]:
            started = time.perf_counter()
            encode_s, samples = timed(encode)
            trainer.step(trainer.collate(samples))
            online.append(time.perf_counter() - started)
            encoding.append(encode_s)
    cached_ms, online_ms = 1e3 * statistics.median(cached), 1e3 * statistics.median(online)
    return dict(cached_ms=cached_ms, online_ms=online_ms, online_encode_ms=1e3 * statistics.median(encoding),
                ratio=online_ms / cached_ms, cached_steps=len(cached), online_steps=len(online),
                frames_per_step=args.batch * args.frames, pooled_drift=drift, shape=shape)


def measure_loader(trainer: Trainer, args) -> dict:
    """run_train's loop, timed: blocked in next(batches) vs in the step; each epoch starts workers."""
    loader, sampler = trainer.loader(args.workers)
    waits, steps, first_waits, epoch = [], [], [], 0
    while len(steps) < BENCH["loader_steps"]:
        sampler.set_position(epoch, 0)
        batches, first = iter(loader), True
        while len(steps) < BENCH["loader_steps"]:
            wait_s, micro = timed(lambda: list(islice(batches, trainer.cfg.grad_accum)))
            if not micro:
                break
            (first_waits if first else waits).append(wait_s)
            steps.append(timed(trainer.step, micro[0])[0])
            first = False
        epoch += 1
    del batches  # shuts its workers down
    wait_ms, step_ms = 1e3 * statistics.mean(waits), 1e3 * statistics.mean(steps)
    return dict(wait_ms=wait_ms, step_ms=step_ms, wait_fraction=wait_ms / (wait_ms + step_ms), steps=len(steps),
                first_wait_ms=1e3 * statistics.mean(first_waits), epochs_started=len(first_waits),
                wait_max_ms=1e3 * max(waits), **measure_batch_build(trainer))


def measure_batch_build(trainer: Trainer, batches: int = 8) -> dict:
    """What the workers hide: building batches in the main process (num_workers=0), and its parts."""
    loader, _ = trainer.loader(0)
    build_s, _ = timed(lambda: list(islice(loader, batches)))
    rows = trainer.instructions[: batches * trainer.cfg.batch_size]
    encode_s, _ = timed(lambda: [trainer.llm.chat.encode(i.question, i.answer) for i in rows])
    read_s, _ = timed(lambda: [trainer.pooled.get(i.video_id) for i in rows])
    return dict(build_batch_ms=1e3 * build_s / batches, chat_encode_ms_per_sample=1e3 * encode_s / len(rows),
                pooled_get_ms_per_sample=1e3 * read_s / len(rows))


@contextlib.contextmanager
def checks_off():
    """run_train's finite checks switched off: the data path's and the step's."""
    saved = PooledStore.nonfinite, train_loop._stop_if_nonfinite
    PooledStore.nonfinite = lambda self, *args: None
    train_loop._stop_if_nonfinite = lambda *args: None
    try:
        yield
    finally:
        PooledStore.nonfinite, train_loop._stop_if_nonfinite = saved


def measure_checks(trainer: Trainer, cache_path: Path, args, rounds: int = 12, steps: int = 2) -> dict:
    """steps/s with and without the finite checks, in alternating short rounds of the same loop;
    and the checks timed alone, as a share of a step (steadier than the end-to-end ratio on a
    busy machine)."""
    loader, sampler = trainer.loader(0)
    rates = {"with": [], "without": []}
    for r in range(rounds):
        for arm in (("with", "without") if r % 2 == 0 else ("without", "with")):
            sampler.set_position(r, 0)
            with checks_off() if arm == "without" else contextlib.nullcontext():
                batches = iter(loader)
                seconds, done = timed(lambda: sum(1 for _ in map(trainer.step, islice(batches, steps))))
            rates[arm].append(done / seconds)
    items = [trainer.dataset[i] for i in range(args.batch)]
    repeats = 50
    data_s, _ = timed(lambda: [trainer.pooled.nonfinite(i.video_id, i.sample.temporal, i.sample.spatial)
                               for _ in range(repeats) for i in items])
    batch, norm = trainer.collate(items), torch.tensor(1.0)
    step_s, _ = timed(lambda: [train_loop._stop_if_nonfinite(1.0, norm, [batch], 1, 1, Path("unused"))
                               for _ in range(repeats)])
    cache = open_cache(cache_path)
    ids = list(cache)[: min(len(cache), 16)]
    read_s, tokens = timed(lambda: [read_and_pool(trainer, cache, v) for v in ids])
    check_s, _ = timed(lambda: [count_nonfinite(t) for t in tokens])
    with_rate, without_rate = statistics.median(rates["with"]), statistics.median(rates["without"])
    check_ms = 1e3 * (data_s + step_s) / repeats
    return dict(with_steps_per_s=with_rate, without_steps_per_s=without_rate, ratio=with_rate / without_rate,
                rounds=rounds, steps_per_round=steps, check_ms_per_step=check_ms,
                check_share=check_ms / (1e3 / without_rate),
                pool_check_ms_per_video=1e3 * check_s / len(ids), read_pool_ms_per_video=1e3 * read_s / len(ids))


def read_and_pool(trainer: Trainer, cache, video_id: str) -> np.ndarray:
    tokens = cache[video_id]  # (T, N, D) float16
    trainer.family.pool(torch.from_numpy(tokens))
    return tokens


@contextlib.contextmanager
def counting_h5_reads():
    """Sum the nbytes of every array h5py hands back while the block runs."""
    counter = dict(bytes=0, reads=0)
    original = h5py.Dataset.__getitem__

    def counted(self, *a, **k):
        out = original(self, *a, **k)
        counter["bytes"] += getattr(out, "nbytes", 0)
        counter["reads"] += 1
        return out

    h5py.Dataset.__getitem__ = counted
    try:
        yield counter
    finally:
        h5py.Dataset.__getitem__ = original


def rchar() -> int:
    return proc_value("self", "io", "rchar")  # bytes


def measure_bytes(trainer: Trainer, cache_path: Path) -> dict:
    """Bytes per sample: the sidecar reads InstructionDataset.__getitem__ does vs the raw cache's."""
    ids = [i.video_id for i in trainer.instructions]
    raw_cache = open_cache(cache_path)
    trainer.dataset[0], raw_cache[ids[0]]  # open the files first: opening is not a per-sample cost
    result = {}
    for name, read in (("pooled", lambda i: trainer.dataset[i]), ("raw", lambda i: raw_cache[ids[i]])):
        before = rchar()
        with counting_h5_reads() as counter:
            for i in range(len(ids)):
                read(i)
        result[name] = dict(array_bytes=counter["bytes"] / len(ids), reads=counter["reads"] / len(ids),
                            syscall_bytes=(rchar() - before) / len(ids))
    info = raw_cache.info
    T, N, D = info["num_frames"], info["num_patches"], info["hidden_size"]
    result.update(formula_pooled=(T + N) * D * 2, formula_raw=T * N * D * 2, shape=dict(T=T, N=N, D=D),
                  big=dict(BIG, pooled=(BIG["T"] + BIG["N"]) * BIG["D"] * 2, raw=BIG["T"] * BIG["N"] * BIG["D"] * 2))
    return result


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc/PID/task/TID/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in children.read_text().split())
    return found


def proc_value(pid, name: str, field: str) -> int:
    """The number on the "Field:  N [kB]" line of /proc/PID/<name>; 0 once the process has ended."""
    with contextlib.suppress(OSError, StopIteration):
        lines = Path(f"/proc/{pid}/{name}").read_text().splitlines()
        return int(next(line.split()[1] for line in lines if line.startswith(field + ":")))
    return 0


class TreePeaks:
    """Peaks over a process and its descendants, sampled from outside it.

    VmRSS (/proc/PID/status, microseconds to read) every sample; PSS only every PSS_EVERY-th:
    smaps_rollup walks the page tables, ~8 ms per torch process, which would steal a core."""

    def __init__(self, root_pid: int):
        self.root, self.samples = root_pid, 0
        self.rss_sum = self.pss_sum = self.child_rss = self.processes = 0  # KiB, KiB, KiB, count

    def sample(self) -> None:
        tree = descendants(self.root)
        rss = {pid: proc_value(pid, "status", "VmRSS") for pid in tree}
        self.rss_sum = max(self.rss_sum, sum(rss.values()))
        self.child_rss = max([self.child_rss] + [kib for pid, kib in rss.items() if pid != self.root])
        self.processes = max(self.processes, len(tree))
        if self.samples % PSS_EVERY == 0:
            self.pss_sum = max(self.pss_sum, sum(proc_value(pid, "smaps_rollup", "Pss") for pid in tree))
        self.samples += 1


def measure_rss(root: Path, cache: Path, model: Path, questions: dict[int, Path], args) -> dict:
    """Peak memory of run_train over 100 vs 1000 questions, each in a fresh subprocess."""
    peaks = {}
    for count, qa_path in questions.items():
        out = root / f"rss-{count}"
        command = [sys.executable, __file__, "--rss-child", str(qa_path), str(cache), str(model), str(out),
                   "--batch", str(args.batch), "--workers", str(args.workers), "--threads", str(args.threads),
                   "--rss-steps", str(args.rss_steps)]
        log = root / f"rss-{count}.log"
        with open(log, "w") as stderr, tempfile.TemporaryFile("w+") as stdout:
            child = subprocess.Popen(command, stdout=stdout, stderr=stderr)
            peaks_seen = TreePeaks(child.pid)
            while child.poll() is None:
                peaks_seen.sample()
                time.sleep(POLL_S)
            stdout.seek(0)
            lines = stdout.read().strip().splitlines()
        if child.returncode != 0 or not lines:
            raise RuntimeError(f"rss child over {count} questions failed ({child.returncode}); see {log}:\n"
                               + log.read_text()[-2000:])
        peaks[count] = dict(json.loads(lines[-1]), tree_rss_mib=peaks_seen.rss_sum / 1024,
                            tree_pss_mib=peaks_seen.pss_sum / 1024, sampled_worker_mib=peaks_seen.child_rss / 1024,
                            max_processes=peaks_seen.processes, samples=peaks_seen.samples)
    return peaks


def rss_child(args) -> None:
    """In a fresh process: one run_train; its peak RSS, its largest worker's, and its ms/step."""
    annotations, cache, model, out = args.rss_child
    cfg = train_config(cache, annotations, out, model, args, max_steps=args.rss_steps,
                       pooled_dir=str(Path(out) / "pooled"))  # each run pools for itself
    stamps = []
    summary = run_train(cfg, progress=lambda p: stamps.append(time.perf_counter()))
    steady = (stamps[-1] - stamps[1]) / (len(stamps) - 2) if len(stamps) > 2 else float("nan")
    print(json.dumps(dict(steps=summary.steps, questions=len(read_instructions(annotations)),
                          parent_mib=own_peak_mib(), seconds=summary.seconds, ms_per_step=1e3 * steady,
                          worker_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)))  # KiB


def own_peak_mib() -> float:
    """This process's peak RSS since exec. Not getrusage(RUSAGE_SELF).ru_maxrss: Linux folds the
    RSS of the image exec replaced (here: the benchmark that spawned us) into it."""
    return proc_value("self", "status", "VmHWM") / 1024


def report(results: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    s, lo, by, rss = results["steps"], results["loader"], results["bytes"], results["rss"]
    table = Table(title=f"redvillm-train: {args.videos} videos, {s['shape']}, batch {args.batch}, LLM width "
                        f"{BENCH['model'].text_hidden} x {BENCH['model'].text_layers} layers, pooling "
                        f"{BENCH['pooling']}, {args.workers} loader workers, torch threads {args.threads}")
    m = BENCH["model"]
    table.caption = (f"tiny LLaVA: {m.image_size} px, patch {m.patch_size}, CLIP {m.vision_hidden} wide x "
                     f"{m.vision_layers} layers, Llama {m.text_hidden} wide x {m.text_layers} layers; videos "
                     f"{BENCH['video']['size']} px, {args.frames} frames each; {args.rss_steps} steps per RSS run")
    for column in ("measure", "value", "note"):
        table.add_column(column, justify="right" if column == "value" else "left")
    table.add_row("step, from the cache", f"{s['cached_ms']:.1f} ms", f"_step on pooled tokens (median of "
                  f"{s['cached_steps']})")
    table.add_row("step, encoder online", f"{s['online_ms']:.1f} ms", f"of which encode_frames + pool "
                  f"{s['online_encode_ms']:.1f} ms ({s['frames_per_step']} frames; median of {s['online_steps']})")
    table.add_row("[bold]online / cache", f"[bold]x{s['ratio']:.1f}", "the per-step cost the cache removes")
    table.add_row("loader wait", f"{lo['wait_ms']:.2f} ms", f"mean blocked in next(batches); max "
                  f"{lo['wait_max_ms']:.1f} ms ({lo['steps']} steps)")
    table.add_row("loader step", f"{lo['step_ms']:.1f} ms", "mean _step in the same loop")
    table.add_row("[bold]wait / (wait + step)", f"[bold]{100 * lo['wait_fraction']:.1f} %", "goal ~0")
    table.add_row("first batch of an epoch", f"{lo['first_wait_ms']:.0f} ms",
                  f"worker start, paid every epoch ({lo['epochs_started']} epochs started)")
    table.add_row("batch build, in-process", f"{lo['build_batch_ms']:.1f} ms",
                  f"num_workers=0: chat.encode {lo['chat_encode_ms_per_sample']:.2f} + pooled.get "
                  f"{lo['pooled_get_ms_per_sample']:.2f} ms per sample, + collate")
    ch = results["checks"]
    table.add_row("steps/s, finite checks on", f"{ch['with_steps_per_s']:.2f}", f"num_workers=0 (worst case); "
                  f"off: {ch['without_steps_per_s']:.2f} steps/s (median of {ch['rounds']} interleaved rounds)")
    table.add_row("[bold]on / off", f"[bold]x{ch['ratio']:.3f}", f"{ch['rounds']} rounds of "
                  f"{ch['steps_per_round']} steps each way; goal ~1")
    table.add_row("[bold]checks alone, per step", f"[bold]{ch['check_ms_per_step']:.3f} ms",
                  f"{100 * ch['check_share']:.2f} % of a step without them (B={args.batch} samples' data check + "
                  "the step's loss/gradient check)")
    table.add_row("pooling check, per video", f"{ch['pool_check_ms_per_video']:.2f} ms",
                  f"once per video; reading + pooling it: {ch['read_pool_ms_per_video']:.2f} ms")
    shape = by["shape"]
    pooled, raw = by["pooled"], by["raw"]
    table.add_row("bytes/sample, pooled", f"{pooled['array_bytes']:,.0f}", f"(T+N)*D*2 = {by['formula_pooled']:,}; "
                  f"read(2): {pooled['syscall_bytes']:,.0f}; {pooled['reads']:.0f} h5py reads")
    table.add_row("bytes/sample, raw cache", f"{raw['array_bytes']:,.0f}", f"T*N*D*2 = {by['formula_raw']:,}; "
                  f"read(2): {raw['syscall_bytes']:,.0f} (T={shape['T']} N={shape['N']} D={shape['D']})")
    table.add_row("[bold]raw / pooled", f"[bold]x{raw['array_bytes'] / pooled['array_bytes']:.1f}",
                  f"read(2): x{raw['syscall_bytes'] / pooled['syscall_bytes']:.1f}")
    big = by["big"]
    table.add_row(f"{big['name']}, T={big['T']}", f"x{big['raw'] / big['pooled']:.1f}",
                  f"arithmetic: pooled {big['pooled'] / 1e6:.2f} MB vs raw {big['raw'] / 1e6:.1f} MB per sample "
                  f"(N={big['N']} D={big['D']})")
    small, large = (rss[n] for n in BENCH["rss_questions"])
    for key, label in (("parent_mib", "trainer (VmHWM)"), ("worker_mib", "largest loader worker"),
                       ("tree_rss_mib", "process tree, sum RSS"), ("tree_pss_mib", "process tree, sum PSS")):
        table.add_row(f"peak RSS, {label}", f"x{large[key] / small[key]:.2f}",
                      f"{small[key]:.0f} MiB ({small['questions']} questions) -> {large[key]:.0f} MiB "
                      f"({large['questions']}); goal ~1")
    table.add_row("run_train ms/step", f"{large['ms_per_step']:.1f} ms",
                  f"{small['ms_per_step']:.1f} ms at {small['questions']} questions; steps 2..{large['steps']}, "
                  "loader wait included")
    phases = ", ".join(f"{name} {seconds:.0f}" for name, seconds in results["phases"].items())
    table.add_row("wall time", f"{results['seconds']:.0f} s", f"{phases} s")
    load = " -> ".join(f"{x:.1f}" for x in results["load_average"])
    table.add_row("machine load", f"{load}", f"1-min load average at start and after each phase ({os.cpu_count()} "
                  "CPUs): other work on the machine slows every ms figure, not the ratios taken interleaved")
    Console(width=160).print(table)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=50, help="even: each synthetic video has a twin")
    parser.add_argument("--frames", type=int, default=32, help="T: frames per video, all of them cached")
    parser.add_argument("--batch", type=int, default=8, help="B: samples per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps from the cache")
    parser.add_argument("--workers", type=int, default=TrainConfig.num_workers, help="DataLoader workers")
    parser.add_argument("--rss-steps", type=int, default=20, help="max_steps of each peak-RSS run_train")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--out-dir", type=Path, default=None, help="keep videos, model, cache and runs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--rss-child", nargs=4, metavar=("QA", "CACHE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.videos < 2 or args.videos % 2:
        parser.error("--videos must be even and >= 2")
    if args.batch > args.videos:
        parser.error("--batch must be <= --videos: the online step encodes B different videos")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        return rss_child(args)
    started, phases, load = time.perf_counter(), {}, [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = args.out_dir or Path(tmp) / "run"
        root.mkdir(parents=True, exist_ok=False)  # fresh: cache and sidecars are written from scratch
        model = build_tiny_llava(root / "tiny-llava", BENCH["model"])
        videos, cache, qa = make_data(root, model, args)
        questions = {n: write_questions(root / f"qa-{n}.json", qa, n) for n in BENCH["rss_questions"]}
        # The smaller set: its epochs end within the loader measurement, so worker restarts show.
        trainer = Trainer(train_config(cache, questions[min(questions)], root / "unused", model, args))
        phases["setup"] = time.perf_counter() - started
        results = {}
        for name, measure in (("bytes", lambda: measure_bytes(trainer, cache)),
                              ("checks", lambda: measure_checks(trainer, cache, args)),
                              ("loader", lambda: measure_loader(trainer, args)),  # before the encoder loads
                              ("steps", lambda: measure_steps(trainer, videos, cache, model, args)),
                              ("rss", lambda: measure_rss(root, cache, model, questions, args))):
            phases[name], results[name] = timed(measure)
            load.append(os.getloadavg()[0])
    results.update(seconds=time.perf_counter() - started, phases=phases, load_average=load,
                   torch_threads=args.threads,
                   settings=dict(videos=args.videos, frames=args.frames, batch=args.batch, workers=args.workers,
                                 rss_steps=args.rss_steps, video=BENCH["video"], model=vars(BENCH["model"]),
                                 pooling=BENCH["pooling"], temporal_module=BENCH["temporal_module"]))
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
