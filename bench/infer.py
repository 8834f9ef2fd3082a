"""Inference benchmark: does answering from cached video tokens cost more than the image LLM?

    python bench/infer.py [--questions 24] [--new-tokens 16] [--threads 2] [--json PATH]

Measured in one run, with two tiny random-weight LLaVA replicas that share one LLM config:

    video   VideoLLM.generate from pooled cached tokens: T + N = 15 + 49 = 64 video tokens
    image   the backbone's own LlavaForConditionalGeneration.generate on one 256 px image with
            the same number of visual tokens (8 x 8 = 64), vision encoder included

    ratio = video s/question / image s/question, goal <= 1.1 (the video path adds nothing);
    batched vs unbatched: questions/s of VideoLLM.generate at batch 8 vs batch 1.

Every answer is forced to the same length (min_new_tokens = max_new_tokens), so the
comparison is per generated token, not per lucky early stop.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from redvillm.cli import command, config_from, friendly_errors, options_from
from redvillm.settings import setting

os.environ["HF_HUB_OFFLINE"] = "1"

LLM = dict(text_hidden=256, text_layers=4, text_heads=8, vision_hidden=128, vision_layers=2, vision_heads=4)


@dataclass
class InferBench:
    """The benchmark's settings; every field is a flag."""

    questions: int = setting(24, "Questions answered per path.")
    new_tokens: int = setting(16, "Tokens generated per answer (forced: min = max).")
    threads: int = setting(2, "torch intra-op threads.")
    json: str | None = setting(None, "Also write the numbers to this file.", path=True)

    def __post_init__(self):
        if min(self.questions, self.new_tokens, self.threads) < 1:
            raise ValueError("--questions, --new-tokens and --threads must be >= 1")


@command(help=__doc__.splitlines()[0])
@options_from(InferBench)
@click.pass_context
@friendly_errors
def main(ctx: click.Context, config_file: str | None, **flags) -> None:
    args = config_from(ctx, InferBench, config_file, **flags)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(Path(tmp), args.questions, args.new_tokens)
    report(results, args)


def measure(tmp: Path, count: int, new_tokens: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from redvillm.batching import VideoSample
    from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava
    from redvillm.model_io import build_video_llm

    video_dir = build_tiny_llava(tmp / "video-llava", TinyLlavaConfig(image_size=224, **LLM))
    image_dir = build_tiny_llava(tmp / "image-llava", TinyLlavaConfig(image_size=256, **LLM))
    cpu = torch.device("cpu")
    llm = build_video_llm(str(video_dir), "both", "copy", cpu, torch.float32)
    rng = np.random.default_rng(0)
    question = "Which colour appeared first, red or blue?"
    samples = [VideoSample(llm.chat.encode(question), torch.from_numpy(rng.normal(size=(15, 128))).float(),
                           torch.from_numpy(rng.normal(size=(49, 128))).float()) for _ in range(count)]
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def video_batches(size: int):
        for start in range(0, count, size):
            batch = llm.batch(samples[start : start + size], for_generation=True)
            llm.generate(batch, **gen)

    processor = AutoProcessor.from_pretrained(image_dir)
    image_model = LlavaForConditionalGeneration.from_pretrained(image_dir).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(count)]

    def image_answers():
        with torch.inference_mode():
            for image in images:
                inputs = processor(images=image, text=prompt, return_tensors="pt")
                image_model.generate(**inputs, pad_token_id=0, **gen)

    video_batches(1), image_answers()  # warm-up: allocator, kernels, tokenizer caches
    video_one = _timed(lambda: video_batches(1)) / count
    image_one = _timed(image_answers) / count
    video_eight = _timed(lambda: video_batches(8)) / count
    tokens = llm.batch(samples[:1], for_generation=True).input_ids
    image_tokens = int((processor(images=images[0], text=prompt, return_tensors="pt")["input_ids"]
                        == image_model.config.image_token_id).sum())
    video_tokens = int((tokens == llm.chat.placeholder_id).sum())
    return {"questions": count, "new_tokens": new_tokens, "visual_tokens": {"video": video_tokens, "image": image_tokens},
            "s_per_question": {"video_batch1": video_one, "image_batch1": image_one, "video_batch8": video_eight},
            "ratio_video_vs_image": video_one / image_one, "batched_speedup": video_one / video_eight}


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def report(results: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    per = results["s_per_question"]
    table = Table(title=f"bench/infer.py: {results['questions']} questions, {results['new_tokens']} new tokens each, "
                        f"{args.threads} threads")
    table.add_column("path")
    table.add_column("visual tokens", justify="right")
    table.add_column("ms / question", justify="right")
    table.add_column("questions / s", justify="right")
    table.add_row("video from cache, batch 1", str(results["visual_tokens"]["video"]), f"{1000 * per['video_batch1']:.1f}",
                  f"{1 / per['video_batch1']:.2f}")
    table.add_row("image LLM on one image, batch 1", str(results["visual_tokens"]["image"]),
                  f"{1000 * per['image_batch1']:.1f}", f"{1 / per['image_batch1']:.2f}")
    table.add_row("video from cache, batch 8", str(results["visual_tokens"]["video"]), f"{1000 * per['video_batch8']:.1f}",
                  f"{1 / per['video_batch8']:.2f}")
    console = Console()
    console.print(table)
    console.print(f"video / image time per question: {results['ratio_video_vs_image']:.3f} (goal <= 1.1); "
                  f"batch 8 vs batch 1 throughput: {results['batched_speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
