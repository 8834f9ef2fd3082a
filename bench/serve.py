"""Serving benchmark: what do batched concurrent requests buy over one request at a time?

    python bench/serve.py [--requests 16] [--clients 8] [--new-tokens 16] [--rounds 2] [--threads 2] [--json PATH]

Measured in one run against one redvillm-serve app (in-process uvicorn on a loopback port) with a
tiny LLaVA replica trained for one step on synthetic videos, through the official openai client:

    sequential   one client sends the requests one after another (every generate has batch 1)
    concurrent   N clients send the same requests at once (the server batches them)

Each request is a video file path + a question, and the server forgets decoded videos
(remember_videos=0), so every request pays for decoding, encoding and generation. Greedy decoding: both modes produce the same answers, hence the same tokens.
Printed: median latency and requests/s per mode, the concurrent/sequential throughput ratio,
and the batch sizes the server actually ran; rounds alternate the two modes.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

from redvillm.cli import command, config_from, friendly_errors, options_from
from redvillm.settings import setting

os.environ["HF_HUB_OFFLINE"] = "1"

LLM = dict(text_hidden=256, text_layers=4, text_heads=8, vision_hidden=128, vision_layers=2, vision_heads=4)
QUESTIONS = ("What happens in the video?", "Which colour appears first?", "视频里的方块往哪边移动？")


@dataclass
class ServeBench:
    """The benchmark's settings; every field is a flag."""

    requests: int = setting(16, "Requests per mode and round.")
    clients: int = setting(8, "Concurrent clients (and the server's max batch).")
    new_tokens: int = setting(16, "Tokens generated per answer, at most.")
    rounds: int = setting(2, "Rounds, alternating the two modes (medians printed).")
    batch_wait_ms: float = setting(10.0, "The server's wait for a batch to fill.")
    threads: int = setting(2, "torch intra-op threads.")
    json: str | None = setting(None, "Also write the numbers to this file.", path=True)

    def __post_init__(self):
        if min(self.requests, self.clients, self.new_tokens, self.rounds, self.threads) < 1:
            raise ValueError("--requests, --clients, --new-tokens, --rounds and --threads must be >= 1")


@command(help=__doc__.splitlines()[0])
@options_from(ServeBench)
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, **flags) -> None:
    args = config_from(ctx, ServeBench, config_file, **flags)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, videos = build_run(Path(tmp))
        results = measure(run_dir, videos, args)
    report(results, args)


def build_run(tmp: Path) -> tuple[Path, list[Path]]:
    """Synthetic videos -> tiny LLaVA -> T=8 cache -> a one-step trained run."""
    from redvillm.data.synthetic import SyntheticConfig, generate
    from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava
    from redvillm.extract.config import ExtractConfig
    from redvillm.extract.pipeline import run_extract
    from redvillm.train.config import TrainConfig
    from redvillm.train.loop import run_train

    generate(tmp / "synthetic", SyntheticConfig(num_videos=4, num_frames=24, size=96, fps=8, seed=1))
    model = build_tiny_llava(tmp / "tiny-llava", TinyLlavaConfig(image_size=224, **LLM))
    cache = tmp / "cache.h5"
    run_extract(ExtractConfig(str(tmp / "synthetic" / "videos"), str(cache), model=str(model), num_frames=8,
                              decode_workers=1, device="cpu"))
    run_train(TrainConfig(str(cache), str(tmp / "synthetic" / "qa.json"), str(tmp / "run"), model=str(model),
                          batch_size=4, max_steps=1, num_workers=0, device="cpu"))
    return tmp / "run", sorted((tmp / "synthetic" / "videos").glob("*.mp4"))


def measure(run_dir: Path, videos: list[Path], args) -> dict:
    import openai
    import uvicorn

    from redvillm import VideoAnswerer
    from redvillm.serve.app import build_app
    from redvillm.serve.config import ServeConfig

    cfg = ServeConfig(str(run_dir), model_name="bench", max_batch=args.clients, batch_wait_ms=args.batch_wait_ms,
                      default_max_tokens=args.new_tokens, decode_workers=2)
    answerer = VideoAnswerer.load(run_dir, device="cpu", decode_workers=2, remember_videos=0)  # decode every time
    app = build_app(answerer, cfg)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="unused",
                           max_retries=0, timeout=600)
    asks = [(str(videos[i % len(videos)]), QUESTIONS[i % len(QUESTIONS)]) for i in range(args.requests)]
    try:
        return _rounds(client, asks, args, app.state.batcher)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        answerer.close()


def _rounds(client, asks, args, batcher) -> dict:
    def one(item) -> tuple[float, str]:
        started = time.perf_counter()
        reply = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": item[0]}}, {"type": "text", "text": item[1]}]}])
        return time.perf_counter() - started, reply.choices[0].message.content

    def sequential():
        return [one(item) for item in asks]

    def concurrent():
        with ThreadPoolExecutor(args.clients) as pool:
            return list(pool.map(one, asks))

    sequential()  # warm-up: frame encoder load, decoder processes, allocator
    runs = {"sequential": [], "concurrent": []}
    answers, batch_sizes = {}, []
    for _ in range(args.rounds):
        for mode, fn in (("sequential", sequential), ("concurrent", concurrent)):
            before = len(batcher.batches)
            started = time.perf_counter()
            timed = fn()
            runs[mode].append({"seconds": time.perf_counter() - started, "latencies": [t for t, _ in timed]})
            answers[mode] = [a for _, a in timed]
            if mode == "concurrent":
                batch_sizes += batcher.batches[before:]
    return _summary(runs, answers, batch_sizes, args)


def _summary(runs: dict, answers: dict, batch_sizes: list[int], args) -> dict:
    modes = {}
    for mode, rounds in runs.items():
        seconds = statistics.median(r["seconds"] for r in rounds)
        latencies = [t for r in rounds for t in r["latencies"]]
        modes[mode] = {"requests_per_s": args.requests / seconds, "median_latency_s": statistics.median(latencies),
                       "p90_latency_s": statistics.quantiles(latencies, n=10)[-1], "seconds": seconds}
    return {"requests": args.requests, "clients": args.clients, "new_tokens": args.new_tokens, "rounds": args.rounds,
            "modes": modes, "same_answers": answers["sequential"] == answers["concurrent"],
            "throughput_ratio": modes["concurrent"]["requests_per_s"] / modes["sequential"]["requests_per_s"],
            "latency_ratio": modes["concurrent"]["median_latency_s"] / modes["sequential"]["median_latency_s"],
            "concurrent_batch_sizes": batch_sizes}


def report(results: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bench/serve.py: {results['requests']} requests, {results['new_tokens']} new tokens at most, "
                        f"{args.threads} threads, median of {results['rounds']} rounds")
    for column in ("mode", "requests / s", "median latency ms", "p90 latency ms"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, m in results["modes"].items():
        name = "sequential (batch 1)" if mode == "sequential" else f"{results['clients']} concurrent clients"
        table.add_row(name, f"{m['requests_per_s']:.2f}", f"{1000 * m['median_latency_s']:.0f}",
                      f"{1000 * m['p90_latency_s']:.0f}")
    console = Console()
    console.print(table)
    sizes = results["concurrent_batch_sizes"]
    console.print(f"concurrent vs sequential throughput: {results['throughput_ratio']:.2f}x; median latency "
                  f"{results['latency_ratio']:.2f}x; batches run: {sizes}; same answers: {results['same_answers']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
