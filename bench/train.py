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
The fixture and timings are in train_measures.py, peak memory in train_memory.py, the table in
train_report.py (beside this script, which puts its folder first on sys.path).
"""


from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import click  # noqa: E402
import torch  # noqa: E402

from redvillm.cli import command, config_from, friendly_errors, options_from  # noqa: E402
from redvillm.train.annotations import read_instructions  # noqa: E402
from redvillm.data.tiny_llava import build_tiny_llava  # noqa: E402
from redvillm.settings import setting  # noqa: E402
from redvillm.train.config import TrainConfig  # noqa: E402
from redvillm.train.loop import run_train  # noqa: E402
from train_measures import (  # noqa: E402
    BENCH,
    Trainer,
    make_data,
    measure_bytes,
    measure_checks,
    measure_loader,
    measure_steps,
    timed,
    train_config,
    write_questions,
)
from train_memory import measure_rss, own_peak_mib  # noqa: E402
from train_report import report  # noqa: E402


@dataclass
class TrainBench:
    """The benchmark's settings; every field is a flag."""

    videos: int = setting(50, "Synthetic videos; even: each has a twin.")
    frames: int = setting(32, "T: frames per video, all of them cached.")
    batch: int = setting(8, "B: samples per step.")
    steps: int = setting(20, "Timed steps from the cache.")
    workers: int = setting(TrainConfig.num_workers, "DataLoader workers.")
    rss_steps: int = setting(20, "max_steps of each peak-RSS run_train.")
    threads: int = setting(torch.get_num_threads(), "torch intra-op threads.")
    out_dir: str | None = setting(None, "Keep videos, model, cache and runs here (a new folder).", path=True)
    json: str | None = setting(None, "Also write the numbers to this file.", path=True)

    def __post_init__(self):
        if self.videos < 2 or self.videos % 2:
            raise ValueError("--videos must be even and >= 2")
        if self.batch > self.videos:
            raise ValueError("--batch must be <= --videos: the online step encodes B different videos")


@command(help=__doc__.split("\n\n")[0])
@options_from(TrainBench)
@click.option("--rss-child", nargs=4, hidden=True, default=None)  # QA CACHE MODEL OUT: one run of measure_rss
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, rss_child: tuple[str, str, str, str] | None, **flags) -> None:
    args = config_from(ctx, TrainBench, config_file, **flags)
    torch.set_num_threads(args.threads)
    if rss_child:
        return rss_child_run(*rss_child, args)
    started, phases, load = time.perf_counter(), {}, [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(args.out_dir) if args.out_dir else Path(tmp) / "run"
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
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")


def rss_child_run(annotations: str, cache: str, model: str, out: str, args: TrainBench) -> None:
    """In a fresh process: one run_train; its peak RSS, its largest worker's, and its ms/step."""
    cfg = train_config(cache, annotations, out, model, args, max_steps=args.rss_steps,
                       pooled_dir=str(Path(out) / "pooled"))  # each run pools for itself
    stamps = []
    summary = run_train(cfg, progress=lambda p: stamps.append(time.perf_counter()))
    steady = (stamps[-1] - stamps[1]) / (len(stamps) - 2) if len(stamps) > 2 else float("nan")
    print(json.dumps(dict(steps=summary.steps, questions=len(read_instructions(annotations)),
                          parent_mib=own_peak_mib(), seconds=summary.seconds, ms_per_step=1e3 * steady,
                          worker_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)))  # KiB


if __name__ == "__main__":
    main()
