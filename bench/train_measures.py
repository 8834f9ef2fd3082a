"""bench/train.py's fixture and its timings: synthetic videos cached by redvillm-extract, a trainer
built by run_train's own setup, and the step, loader, finite-check and bytes-per-sample measurements
(what each measures: bench/train.py's docstring).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from itertools import islice
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

from redvillm.batching import VideoSample
from redvillm.cache import count_nonfinite, open_cache
from redvillm.data.synthetic import SyntheticConfig, generate
from redvillm.data.tiny_llava import TinyLlavaConfig
from redvillm.extract.config import ExtractConfig
from redvillm.extract.decode import DecodeSettings, decode_video
from redvillm.extract.pipeline import encode_frames
from redvillm.train import loop as train_loop
from redvillm.train.config import TrainConfig
from redvillm.train.data import ResumableSampler, TrainItem, collate_items
from redvillm.train.loop import setup
from redvillm.train.pooled import PooledStore
from train_memory import proc_value

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
