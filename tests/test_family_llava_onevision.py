"""LLaVA-OneVision beyond the conformance suite: where its image_newline goes and that it is the
checkpoint's own, also from the transformers-4 layout the hub's llava-hf checkpoints were saved in."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaOnevisionForConditionalGeneration

from redvillm.batching import VideoSample, collate
from redvillm.families.registry import load_family
from redvillm.model_io import build_video_llm

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_llava_onevision(tiny_model):
    """A random-weight LlavaOnevisionForConditionalGeneration (72 px tile, 5 x 5 patches, D = 32, K = 64)."""
    return tiny_model("llava_onevision", "tiny_llava_onevision")


def video_embeddings(llm, family, tokens: torch.Tensor) -> torch.Tensor:
    """(V, K): what the LLM receives at the video placeholders for frame tokens (T, N, D)."""
    sample = VideoSample(llm.chat.encode("哪个颜色先出现？"), *family.pool(tokens))
    batch = collate([sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0, with_labels=False)
    with torch.no_grad():
        return llm.embed(batch)[0][batch.input_ids[0] == llm.chat.placeholder_id]


def test_the_newline_follows_both_token_sets_frozen_and_unsaved(tiny_llava_onevision):
    """[g_t(temporal) (T), g_z(spatial) (N), image_newline (1)], as the model ends a video with one newline."""
    family = load_family(str(tiny_llava_onevision))
    llm = build_video_llm(str(tiny_llava_onevision), "both", "copy", CPU, torch.float32)
    tokens = torch.randn(3, 25, 32, generator=torch.Generator().manual_seed(0))  # (T, N, D)
    temporal, spatial = family.pool(tokens)
    with torch.no_grad():
        expected = torch.cat([llm.adapter.temporal_proj(temporal), llm.adapter.spatial_proj(spatial),
                              llm.backbone.model.image_newline[None]])
    torch.testing.assert_close(video_embeddings(llm, family, tokens), expected, rtol=0, atol=0)
    assert "suffix" not in llm.adapter.state_dict()  # comes with the backbone, never trained
    assert all(parameter is not llm.adapter.suffix for parameter in llm.adapter.parameters())


def test_transformers4_layout_gives_the_same_tower_and_newline(tiny_llava_onevision, tmp_path, monkeypatch):
    """The hub's llava-hf OneVision checkpoints nest SigLIP under vision_tower.vision_model.: stage one
    still reads the tower alone, and stage two gets the checkpoint's image_newline, not a fresh one."""
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_llava_onevision, legacy)
    state = load_file(tiny_llava_onevision / "model.safetensors")
    assert any(key.startswith("vision_tower.embeddings.") for key in state)
    nested = {key.replace("vision_tower.", "vision_tower.vision_model.", 1): value for key, value in state.items()}
    save_file(nested, legacy / "model.safetensors", metadata={"format": "pt"})

    pixels = torch.randn(2, 3, 72, 72, generator=torch.Generator().manual_seed(1))
    with monkeypatch.context() as patch:  # the tower's tensors alone, never the whole model
        patch.setattr(LlavaOnevisionForConditionalGeneration, "from_pretrained", _whole_model_loaded)
        features = [load_family(str(d)).load_frame_encoder(CPU, torch.float32)(pixels)
                    for d in (tiny_llava_onevision, legacy)]
    torch.testing.assert_close(features[1], features[0], rtol=0, atol=0)

    newlines = [build_video_llm(str(d), "both", "copy", CPU, torch.float32).adapter.suffix
                for d in (tiny_llava_onevision, legacy)]
    assert torch.equal(newlines[0], state["image_newline"][None]) and torch.equal(newlines[1], newlines[0])


def _whole_model_loaded(*args, **kwargs):
    raise AssertionError("stage one loaded the whole model instead of the vision tower's tensors")
