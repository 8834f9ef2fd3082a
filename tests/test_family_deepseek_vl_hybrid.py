"""DeepSeek-VL 7B (deepseek_vl_hybrid) beyond the conformance suite (tests/test_family_conformance.py):
the two towers and their feature split, the two resolutions made from one padded frame, exact
levels in bfloat16, the transformers-4 layout, and processors without a fixed frame size."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor

from redvillm.data.tiny_deepseek_vl_hybrid import TinyDeepseekVLHybridConfig
from redvillm.errors import UserError
from redvillm.families import deepseek_vl_hybrid as adapter
from redvillm.families.registry import load_family
from redvillm.frames import normalize, resize_and_crop

REPLICA = TinyDeepseekVLHybridConfig()
D_LOW, D_HIGH = REPLICA.vision_hidden, 4 * REPLICA.high_res_output_channels


@pytest.fixture(scope="session")
def tiny_hybrid(tiny_model):
    """A random-weight DeepseekVLHybridForConditionalGeneration saved with save_pretrained (96 / 256 px)."""
    return tiny_model("deepseek_vl_hybrid", "tiny_deepseek_vl_hybrid")


def test_both_towers_feed_the_cache_side_by_side(tiny_hybrid):
    """SAM's global-layer path takes part (alpha != 0), and the cache records where SigLIP ends."""
    assert load_file(tiny_hybrid / "model.safetensors")["model.high_res_vision_alpha"].item() != 0
    vision = load_family(str(tiny_hybrid)).vision_provenance()
    assert vision["feature_split"] == [D_LOW, D_HIGH] and vision["low_res_image_size"] == REPLICA.image_size


@pytest.mark.parametrize("hw", [(240, 320), (320, 180)])
def test_frames_are_levels_padded_with_the_high_resolution_mean(tiny_hybrid, hw):
    """Frames leave preprocessing as the padded high-resolution levels themselves (the encoder makes
    both resolutions from them: equal to the processor's, in the conformance suite)."""
    processor = AutoImageProcessor.from_pretrained(tiny_hybrid)  # loads without torchvision (PIL backend)
    spec = load_family(str(tiny_hybrid)).frame_preprocess()
    high_size = REPLICA.high_res_image_size
    assert spec.fixed_output_hw() == (high_size, high_size)
    frames = np.random.default_rng(1).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    geometry = resize_and_crop(torch.from_numpy(frames), spec)  # (F, 3, 256, 256) uint8
    assert torch.equal(normalize(geometry, spec, torch.float32), geometry.float())
    short = round(min(hw) * high_size / max(hw))  # 192 and 144: pad bands of 32 and 56
    band = geometry[..., : (high_size - short) // 2, :] if hw[0] < hw[1] else geometry[..., : (high_size - short) // 2]
    fill = torch.tensor([int(m * 255) for m in processor.high_res_image_mean], dtype=torch.uint8).view(1, 3, 1, 1)
    assert band.numel() and (band == fill).all()  # (122, 116, 104), not SigLIP's 127 grey


def test_frames_reach_the_encoder_exactly_in_bfloat16(tiny_hybrid):
    """Levels 0..255 are exact in bfloat16, so a GPU run sees the same pixels as a float32 one."""
    family = load_family(str(tiny_hybrid))
    spec = family.frame_preprocess()
    frames = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (1, 200, 300, 3), dtype=np.uint8))
    geometry = resize_and_crop(frames, spec)

    def pixels(dtype):
        return family.load_frame_encoder(torch.device("cpu"), dtype).pixel_values(normalize(geometry, spec, dtype))

    for ours, reference in zip(pixels(torch.bfloat16), pixels(torch.float32)):  # (low, high)
        assert ours.dtype == torch.bfloat16 and torch.equal(ours, reference.to(torch.bfloat16))


def test_towers_load_alone_from_a_transformers_4_layout(tiny_hybrid, tmp_path, monkeypatch):
    """Checkpoints converted with transformers 4 nest SigLIP under "vision_model." twice; stage one still
    reads only the towers' tensors (never the whole model) and gets the same features."""
    old = tmp_path / "old-layout"
    shutil.copytree(tiny_hybrid, old)
    state = load_file(old / "model.safetensors")
    prefix = "model.vision_model."
    save_file({k.replace(prefix, prefix + "vision_model.", 1) if k.startswith(prefix) else k: v for k, v in state.items()},
              old / "model.safetensors", metadata={"format": "pt"})
    frames = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, 3, 256, 256))).float()
    expected = load_family(str(tiny_hybrid)).load_frame_encoder(torch.device("cpu"), torch.float32)(frames)
    monkeypatch.setattr(adapter.DeepseekVLHybridForConditionalGeneration, "from_pretrained", None)  # no full load
    encoder = load_family(str(old)).load_frame_encoder(torch.device("cpu"), torch.float32)
    assert torch.equal(encoder(frames), expected)


@pytest.mark.parametrize("change", [{"do_pad": False}, {"high_res_size": {"height": 256, "width": 192}}])
def test_a_processor_without_a_fixed_frame_size_is_refused(tiny_hybrid, tmp_path, change):
    model = tmp_path / "changed"
    shutil.copytree(tiny_hybrid, model)
    for name in ("preprocessor_config.json", "processor_config.json"):
        config = json.loads((model / name).read_text())
        (config["image_processor"] if "image_processor" in config else config).update(change)
        (model / name).write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        load_family(str(model))
    assert "\n" not in str(err.value) and str(model) in str(err.value) and next(iter(change)) in str(err.value)
