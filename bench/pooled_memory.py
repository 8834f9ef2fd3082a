"""Working memory per video of the two stores, at llava-1.5-7b's shape (T = 100, N = 576, D = 1024).

    python bench/pooled_memory.py [--videos 3] [--batch 32]

Each store runs in a fresh process: the encoder's float16 batches (random tokens stand in for
the encoder, whose own activations are the same for both stores) go to a real ShardWriter in a
temporary folder, as run_extract sends them: raw concatenates the batches into the (T, N, D)
array (encode_frames) and stores it; pooled feeds each batch to a RunningPool (encode_pooled) and
stores the two sets; "batches only" makes the batches and drops them (what the encoder's output
costs whatever the store). Printed: each process's peak RSS (VmHWM) above its RSS after the
imports, and the bytes of one video's tokens and of one batch, to compare with.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPE = dict(frames=100, patches=576, width=1024)  # llava-1.5-7b at T = 100
MODES = ("batches only", "raw", "pooled")  # "batches only": the encoder's output alone, stored nowhere


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_store(store: str, videos: int, batch: int) -> None:
    """The child: extract `videos` synthetic videos into a temporary shard; print the peak above start."""
    import torch

    from redvillm.cache import CacheInfo
    from redvillm.extract.store import ShardWriter
    from redvillm.families.common import mean_pool
    from redvillm.memory import trim_heap
    from redvillm.pooled_sets import RunningPool

    torch.set_num_threads(1)
    t, n, d = SHAPE["frames"], SHAPE["patches"], SHAPE["width"]
    info = CacheInfo("llava", "bench", None, {}, (336, 336), t, n, d, "uniform", "repeat", "float32", "0",
                     store="raw" if store == "raw" else "pooled")
    start = _rss_kb("VmRSS")
    with tempfile.TemporaryDirectory() as folder:
        writer = ShardWriter(Path(folder), 0, info, max_bytes=1 << 40, next_seq=0)
        for video in range(videos):
            generator = torch.Generator().manual_seed(video)
            batches = (torch.randn(min(batch, t - s), n, d, generator=generator, dtype=torch.float16)
                       for s in range(0, t, batch))  # what encode_batches yields
            if store == "raw":
                writer.add(f"v{video}", torch.cat(list(batches)).numpy(), {})
            elif store == "batches only":
                for tokens in batches:
                    del tokens
            else:
                running = RunningPool(mean_pool)
                for tokens in batches:
                    running.add(tokens.numpy())
                    del tokens  # as encode_pooled does
                writer.add_pooled(f"v{video}", running.result(), {})
            trim_heap()  # as run_extract does after each video
        writer.close_shard()
    print((_rss_kb("VmHWM") - start) * 1024)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_store(args.child, args.videos, args.batch)
    t, n, d = SHAPE["frames"], SHAPE["patches"], SHAPE["width"]
    print(f"one video's (T, N, D) float16 tokens: {t * n * d * 2 / 1e6:.1f} MB; one batch of {args.batch} frames: "
          f"{args.batch * n * d * 2 / 1e6:.1f} MB; pooled sets: {(t + n) * d * 2 / 1e6:.2f} MB")
    for store in MODES:
        done = subprocess.run([sys.executable, __file__, "--child", store, "--videos", str(args.videos), "--batch",
                               str(args.batch)], capture_output=True, text=True, check=True)
        print(f"{store:>12}: peak RSS above start over {args.videos} videos: {int(done.stdout.split()[-1]) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
