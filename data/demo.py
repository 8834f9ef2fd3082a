"""The demo's inputs, made offline from fixed seeds: sample videos and two image LLMs.

    python -m redvillm.data.demo DIR

writes DIR/videos/*.mp4 (+ DIR/qa.json, DIR/labels.json: the synthetic order/direction task in
VideoInstruct format, 224 px, 120 frames), DIR/train/ and DIR/test/ (the colour control and the four temporal tasks at
the image LLM's 64 px, answers reduced to the label word, held-out videos drawn from another
seed), DIR/image-llm/ (a copy of the tiny image LLM we trained on synthetic
image QA and ship in data/assets: a real, if tiny, image LLM) and DIR/tiny-llava/ (a
random-weight LlavaForConditionalGeneration replica: plumbing only, its answers mean nothing).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from redvillm.data.synthetic import CONTROL_TASKS, TEMPORAL_TASKS, SyntheticConfig, answer_with_label_word, generate
from redvillm.data.tiny_image_llm import shipped_image_llm
from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava

# 120 frames at 24 fps: longer than the default T = 100, so sampling picks distinct frames.
DEMO_VIDEOS = SyntheticConfig(num_videos=4, tasks=("order", "direction"), num_frames=120, fps=24, size=224, seed=0)
DEMO_MODEL = TinyLlavaConfig(seed=0)
# Train / held-out splits for the tiny image LLM: every task, 32 and 24 videos per task.
DEMO_SPLITS = {
    "train": SyntheticConfig(num_videos=32, tasks=CONTROL_TASKS + TEMPORAL_TASKS, num_frames=48, size=64, seed=10),
    "test": SyntheticConfig(num_videos=24, tasks=CONTROL_TASKS + TEMPORAL_TASKS, num_frames=48, size=64, seed=11),
}


def build_demo(out_dir: str | Path) -> tuple[Path, Path]:
    """Write the sample videos and the models; returns (videos folder, image LLM folder)."""
    out = Path(out_dir)
    generate(out, DEMO_VIDEOS)
    for split, config in DEMO_SPLITS.items():
        generate(out / split, config)
        answer_with_label_word(out / split)
    build_tiny_llava(out / "tiny-llava", DEMO_MODEL)
    shutil.copytree(shipped_image_llm(), out / "image-llm", dirs_exist_ok=True)
    return out / "videos", out / "image-llm"


if __name__ == "__main__":  # the command line is redvillm.data.cli's: importing this module loads no click
    from redvillm.data.cli import demo_command

    demo_command()()
