"""Encoder benchmark: how close does stage one's frozen vision tower come to this CPU's matmul peak?

    python bench/encoder.py [--batch 32] [--threads CPUS] [--rounds 3] [--towers NAME,...]
                            [--compare eager,1-thread,small-batch,bfloat16,onednn-linear] [--json PATH]

Measured in one run, every number the best of --rounds interleaved rounds (the machine is shared):

    peak        GFLOP/s of torch.mm at float32 and bfloat16, 2 m n k / seconds, on the encoder's
                MLP shape (B*N, D) x (D, 4D) for ViT-B/16 and on a 2048 square, at --threads and
                at 1 thread; the best shape is the peak. Beside it, fp32 through oneDNN's linear
                (torch.ops.mkldnn), which the encoder does not use: what the cores can do when
                the BLAS torch calls (MKL) takes a narrower code path (AMD CPUs).
    towers      frames/s of family.load_frame_encoder(cpu, float32)(pixel_values) under
                inference_mode, --batch frames per forward, for the tiny replica of every family
                and a ViT-B/16-size CLIP tower (LLaVA, 768 wide, 11 of 12 layers run);
                FLOPs/frame from torch.utils.flop_counter.FlopCounterMode on one frame;
                % of peak = FLOPs/frame x frames/s / peak at the same dtype and threads, and the
                same per CPU-second each got (what a quiet machine would show, roughly).
    ViT-B/16    the same tower with eager attention instead of sdpa, on 1 thread, at
                --small-batch frames, in bfloat16 (only when a bf16 matmul is faster than an fp32
                one here: detected, not assumed), and with its nn.Linear layers run by oneDNN.

Goal: the ViT-B/16 tower at float32, --threads, --batch reaches >= 60 % of the fp32 torch.mm peak.
CPU share = process CPU seconds / (wall seconds x threads): below ~0.9, other processes had the cores.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import click  # noqa: E402
import torch  # noqa: E402

import encoder_measures as em  # noqa: E402  (beside this script, which puts its folder first on sys.path)
from encoder_report import report  # noqa: E402
from redvillm.cli import command, config_from, friendly_errors, options_from, quiet_libraries  # noqa: E402
from redvillm.settings import setting  # noqa: E402

CPUS = len(os.sched_getaffinity(0))
COMPARE = ("eager", "1-thread", "small-batch", "bfloat16", "onednn-linear")
GOAL = 0.60


@dataclass
class EncoderBench:
    """The benchmark's settings; every field is a flag."""

    batch: int = setting(32, "Frames per encoder forward (stage one's --batch-size default).")
    small_batch: int = setting(8, "The smaller batch the ViT-B/16 tower is also timed at (--compare small-batch).")
    threads: int = setting(CPUS, "torch threads (default: every CPU this process may use).")
    rounds: int = setting(3, "Interleaved rounds; each number is the best round's.")
    min_seconds: float = setting(0.3, "Each timing repeats its call until this long (one ViT-B forward is longer).")
    towers: tuple[str, ...] = setting(tuple(em.TOWERS), "Towers to time (tiny replicas by family; vit_b16: the "
                                      "ViT-B/16-size CLIP).")
    compare: tuple[str, ...] = setting(COMPARE, "ViT-B/16 variants to time beside its default run.")
    json: str | None = setting(None, "Also write the numbers to this file.", path=True)

    def __post_init__(self):
        if min(self.batch, self.small_batch, self.threads, self.rounds) < 1 or self.min_seconds < 0:
            raise ValueError("--batch, --small-batch, --threads and --rounds must be >= 1, --min-seconds >= 0")
        for value, known, flag in ((self.towers, em.TOWERS, "--towers"), (self.compare, COMPARE, "--compare")):
            unknown = [v for v in value if v not in known]
            if unknown:
                raise ValueError(f"{flag}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
        if self.compare and em.BIG not in self.towers:
            raise ValueError(f"--compare times variants of the {em.BIG} tower: add it to --towers or pass --compare ''")


@dataclass(frozen=True)
class Run:
    """One timed configuration of one tower."""

    label: str
    tower: str
    dtype: str
    threads: int
    batch: int
    attention: str | None = None  # None: as the family loads it
    linear: str = "torch"

    def peak_path(self) -> str:
        return "oneDNN" if self.linear == "oneDNN" else "torch.mm"


@dataclass(frozen=True)
class Matmul:
    """One timed (m, k) x (k, n) product."""

    dtype: str
    threads: int
    path: str  # "torch.mm", or "oneDNN" (the reference the encoder does not use)
    shape: str
    mnk: tuple[int, int, int]

    def gflops(self, seconds: float) -> float:
        m, k, n = self.mnk
        return 2 * m * k * n / seconds / 1e9


@command(help=__doc__.splitlines()[0])
@options_from(EncoderBench)
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, **flags) -> None:
    args = config_from(ctx, EncoderBench, config_file, **flags)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(Path(tmp), args)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def measure(root: Path, args: EncoderBench) -> dict:
    best: dict = {}
    matmuls = matmul_plan(args)
    time_matmuls(matmuls, best, args.min_seconds)  # round one's matmuls also say whether bf16 is worth a tower run
    support = em.bf16_support()
    peak = peaks(matmuls, best)
    support["bf16_over_fp32"] = (peak[("bfloat16", args.threads, "torch.mm")][0]
                                 / peak[("float32", args.threads, "torch.mm")][0])
    runs = tower_plan(args, support["bf16_over_fp32"] > 1.0)
    towers = {}
    for run in runs:
        key = (run.tower, run.dtype, run.linear)
        if key not in towers:
            towers[key] = em.load_tower(em.build_replica(root, run.tower), run.tower, _dtype(run.dtype), args.batch,
                                        run.linear)
    flops = {name: em.flops_per_frame(towers[(name, "float32", "torch")]) for name in args.towers}
    for run in runs:  # warm-up: allocator, thread pool, oneDNN kernels
        _call(towers, run, min(run.batch, 2))
    for round_index in range(args.rounds):
        if round_index:
            time_matmuls(matmuls, best, args.min_seconds)
        for run in runs:
            timing = em.best_time(partial(_call, towers, run, run.batch), run.threads, args.min_seconds)
            em.keep_best(best, run, timing)
    return assemble(args, support, matmuls, best, runs, towers, flops)


def matmul_plan(args: EncoderBench) -> list[Matmul]:
    """Every matmul timed: both dtypes through torch.mm, fp32 through oneDNN, at --threads (and 1)."""
    threads = sorted({args.threads, 1} if "1-thread" in args.compare else {args.threads}, reverse=True)
    tokens = (em.VIT_B16["image_size"] // em.VIT_B16["patch_size"]) ** 2 + 1  # patches and CLS
    shapes = em.matmul_shapes(args.batch, tokens, em.VIT_B16["vision_hidden"])
    paths = [("float32", "torch.mm"), ("bfloat16", "torch.mm")]
    paths += [("float32", "oneDNN")] if em.onednn_linear_available() else []
    return [Matmul(dtype, t, path, name, mnk) for dtype, path in paths for t in threads for name, mnk in shapes.items()]


def time_matmuls(plan: list[Matmul], best: dict, min_seconds: float) -> None:
    for matmul in plan:
        call = em.matmul_call(matmul.mnk, _dtype(matmul.dtype), matmul.path)
        call()  # first call: packing buffers, oneDNN primitive
        em.keep_best(best, matmul, em.best_time(call, matmul.threads, min_seconds))


def peaks(plan: list[Matmul], best: dict) -> dict[tuple[str, int, str], tuple[float, float]]:
    """(GFLOP/s, CPU share) of the best shape per (dtype, threads, path)."""
    out: dict = {}
    for matmul in plan:
        key = (matmul.dtype, matmul.threads, matmul.path)
        measured = (matmul.gflops(best[matmul][0]), best[matmul][1])
        out[key] = max(out.get(key, measured), measured)
    return out


def tower_plan(args: EncoderBench, bf16_fast: bool) -> list[Run]:
    """Every tower at the settings, then the ViT-B/16 variants asked for (bf16 only where it is fast)."""
    runs = [Run(name, name, "float32", args.threads, args.batch) for name in args.towers]
    base = Run(em.BIG, em.BIG, "float32", args.threads, args.batch)
    variants = {
        "eager": replace(base, label=f"{em.BIG} eager attention", attention="eager"),
        "1-thread": replace(base, label=f"{em.BIG} 1 thread", threads=1),
        "small-batch": replace(base, label=f"{em.BIG} batch {args.small_batch}", batch=args.small_batch),
        "bfloat16": replace(base, label=f"{em.BIG} bfloat16", dtype="bfloat16"),
        "onednn-linear": replace(base, label=f"{em.BIG} oneDNN linear", linear="oneDNN"),
    }
    skip = {"1-thread"} if args.threads == 1 else set()
    skip |= set() if bf16_fast else {"bfloat16"}
    skip |= set() if em.onednn_linear_available() else {"onednn-linear"}
    return runs + [variants[name] for name in args.compare if name not in skip]


def _call(towers: dict, run: Run, batch: int):
    tower = towers[(run.tower, run.dtype, run.linear)]
    if run.tower == em.BIG:  # its variants share one config object: set the attention this run wants
        em.set_attention(tower.encoder, run.attention or tower.attention)
    return tower(batch)


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def assemble(args, support: dict, matmuls: list[Matmul], best: dict, runs: list[Run], towers: dict,
             flops: dict) -> dict:
    peak = peaks(matmuls, best)
    matmul_rows = [dict(dtype=m.dtype, threads=m.threads, path=m.path, shape=m.shape, mnk=list(m.mnk),
                        gflops=m.gflops(best[m][0]), cpu_share=best[m][1]) for m in matmuls]
    rows = []
    for run in runs:
        seconds, share = best[run]
        tower = towers[(run.tower, run.dtype, run.linear)]
        fps = run.batch / seconds
        achieved = flops[run.tower] * fps / 1e9
        peak_gflops, peak_share = peak[(run.dtype, run.threads, run.peak_path())]
        rows.append(dict(label=run.label, tower=run.tower, dtype=run.dtype, threads=run.threads, batch=run.batch,
                         attention=run.attention or tower.attention, linear=run.linear,
                         tokens=tower.encoder.num_patches, width=tower.encoder.hidden_size,
                         input_hw=list(tower.pixels.shape[-2:]), gflop_per_frame=flops[run.tower] / 1e9,
                         frames_per_s=fps, gflops=achieved, peak_path=run.peak_path(),
                         fraction=achieved / peak_gflops, cpu_share=share,
                         # the same per CPU-second the process got: less swayed by other processes on the cores
                         fraction_cpu=achieved / share / (peak_gflops / peak_share)))
    big = towers.get((em.BIG, "float32", "torch"))
    return dict(settings=asdict(args), bf16=support, matmul=matmul_rows,
                peaks=[dict(dtype=d, threads=t, path=p, gflops=g, cpu_share=c) for (d, t, p), (g, c) in peak.items()],
                towers=rows,
                flops_method="torch.utils.flop_counter.FlopCounterMode on one frame (CPU flash attention counted "
                             "as the other SDPA kernels)",
                vit_b16_analytic_gflop_per_frame=big and em.vit_flops_per_frame(big.encoder) / 1e9, goal=GOAL)


if __name__ == "__main__":
    main()
