"""The demo's inputs, made offline from fixed seeds: sample videos and the tiny LLaVA replica.

    python -m redvillm.data.demo DIR

writes DIR/videos/*.mp4 (+ DIR/qa.json, DIR/labels.json: the synthetic order/direction task in
VideoInstruct format) and DIR/tiny-llava/ (a random-weight LlavaForConditionalGeneration saved
with save_pretrained). The replica proves the plumbing only: its answers mean nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from redvillm.data.synthetic import SyntheticConfig, generate
from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava

# 120 frames at 24 fps: longer than the default T = 100, so sampling picks distinct frames.
DEMO_VIDEOS = SyntheticConfig(num_videos=4, tasks=("order", "direction"), num_frames=120, fps=24, size=224, seed=0)
DEMO_MODEL = TinyLlavaConfig(seed=0)


def build_demo(out_dir: str | Path) -> tuple[Path, Path]:
    """Write the sample videos and the tiny model; returns (videos folder, model folder)."""
    out = Path(out_dir)
    generate(out, DEMO_VIDEOS)
    model = build_tiny_llava(out / "tiny-llava", DEMO_MODEL)
    return out / "videos", model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m redvillm.data.demo", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    videos, model = build_demo(args.out_dir)
    count = len(list(videos.glob("*.mp4")))
    print(f"wrote {count} sample videos to {videos} and a tiny random-weight LLaVA to {model} "
          f"in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
