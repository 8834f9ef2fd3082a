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
def tiny_model(tmp_path_factory):
    """tiny_model(name, module, *args) -> the folder `python -m redvillm.data.<module> FOLDER *args` wrote
    a tiny replica to, built once per session and name."""
    import importlib

    from click.testing import CliRunner

    from redvillm.data.cli import replica_command

    built: dict[str, Path] = {}

    def get(name: str, module: str, *args: str) -> Path:
        if name not in built:
            out = tmp_path_factory.mktemp("models") / name
            command = replica_command(importlib.import_module(f"redvillm.data.{module}").CLI)
            result = CliRunner().invoke(command, [str(out), *args], catch_exceptions=False)
            assert result.exit_code == 0, result.output[-2000:]
            built[name] = out
        return built[name]

    return get


@pytest.fixture(scope="session")
def tiny_llava(tiny_model) -> Path:
    """A random-weight LlavaForConditionalGeneration saved with save_pretrained (224 px, patch 32)."""
    return tiny_model("llava", "tiny_llava")


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


@pytest.fixture(scope="session")
def small_cache(synthetic_videos, tiny_llava, tmp_path_factory) -> Path:
    """The sample videos extracted at T = 8 with the tiny replica: stage two's input."""
    from redvillm.extract.config import ExtractConfig
    from redvillm.extract.pipeline import run_extract

    out = tmp_path_factory.mktemp("cache") / "cache.h5"
    run_extract(ExtractConfig(str(synthetic_videos), str(out), model=str(tiny_llava), num_frames=8,
                              decode_workers=1, device="cpu"))
    return out


@pytest.fixture(scope="session")
def qa_file(synthetic_videos) -> Path:
    """VideoInstruct-format questions about the sample videos (written by the generator)."""
    return synthetic_videos.parent / "qa.json"


@pytest.fixture(scope="session")
def trained_run(small_cache, qa_file, tmp_path_factory) -> Path:
    """A two-step redvillm-train run on the small cache (the weights mean nothing)."""
    from redvillm.train.config import TrainConfig
    from redvillm.train.loop import run_train

    out = tmp_path_factory.mktemp("run") / "run"
    info_model = __import__("redvillm").open_cache(small_cache).info["model"]
    run_train(TrainConfig(str(small_cache), str(qa_file), str(out), model=info_model, batch_size=4, max_steps=2,
                          lr=3e-3, num_workers=0, device="cpu"))
    return out
