"""Offline fixtures: a tiny LLaVA replica and small real mp4 files, built once per session."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports transformers / huggingface_hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """A random-weight LlavaForConditionalGeneration saved with save_pretrained (224 px, patch 32)."""
    from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", TinyLlavaConfig())


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory) -> Path:
    """A folder of 8 small h264 mp4 files (order + direction tasks, 24 frames of 96x96)."""
    from redvillm.data.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, SyntheticConfig(num_videos=4, num_frames=24, size=96, fps=8, seed=1))
    return root / "videos"


@pytest.fixture
def video_copy(synthetic_videos, tmp_path):
    """A private copy of the sample videos (tests may add or break files in it)."""
    target = tmp_path / "videos"
    shutil.copytree(synthetic_videos, target)
    return target
