"""InternVL3 beyond the conformance suite (tests/test_family_conformance.py): pooling around the
pixel shuffle, an earlier vision layer, frames at InternVL3's own tile size, what caches record."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, GotOcr2ImageProcessorPil, InternVLForConditionalGeneration

from redvillm.families.internvl import InternVLFamily
from redvillm.families.registry import load_family
from redvillm.frames import FramePreprocess, normalize, resize_and_crop

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_internvl(tiny_model):
    """A random-weight InternVLForConditionalGeneration saved with save_pretrained (64 px, patch 8)."""
    return tiny_model("internvl", "tiny_internvl")


@pytest.fixture(scope="session")
def reference(tiny_internvl):
    return InternVLForConditionalGeneration.from_pretrained(tiny_internvl).eval()


def random_frame(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_pooling_respects_the_pixel_shuffle(tiny_internvl, reference):
    family = load_family(str(tiny_internvl))
    encoder = family.load_frame_encoder(CPU, torch.float32)
    pixel_values = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        frames = encoder(pixel_values)  # (T, N, D)
        assert frames.shape == (3, 64, 64)  # N = (64 / 8)^2 before the shuffle, D = vision width
        one = frames[0]
        shuffled_one = reference.model.pixel_shuffle(one.reshape(1, 8, 8, 64), scale_factor=0.5).reshape(16, 256)
        image_features = reference.model.get_image_features(pixel_values[:1]).pooler_output[0]  # (N/4, K)

        temporal, spatial = family.pool(one.expand(5, -1, -1))  # T identical frames
        torch.testing.assert_close(spatial, shuffled_one, rtol=0, atol=1e-6)
        torch.testing.assert_close(temporal, shuffled_one.mean(dim=0).expand(5, -1), rtol=0, atol=1e-6)
        torch.testing.assert_close(reference.model.multi_modal_projector(spatial), image_features)

        temporal, spatial = family.pool(frames)  # different frames: pooling commutes with the shuffle
        groups = family.pixel_shuffle(frames)  # (T, N/4, 4D)
        torch.testing.assert_close(spatial, family.pixel_shuffle(frames.mean(dim=0, keepdim=True))[0])
        torch.testing.assert_close(temporal, groups.mean(dim=1))
        assert temporal.shape == (3, 256) and spatial.shape == (16, 256)


def test_an_earlier_vision_layer_is_what_the_model_selects(tiny_internvl, reference):
    config = AutoConfig.from_pretrained(tiny_internvl)
    config.vision_feature_layer = -2
    family = InternVLFamily(str(tiny_internvl), config)
    encoder = family.load_frame_encoder(CPU, torch.float32)
    assert len(encoder.tower.encoder.layer) == 1  # stopped at the selected layer
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.model.get_image_features(pixel_values, vision_feature_layer=-2).pooler_output
        ours = reference.model.multi_modal_projector(family.pixel_shuffle(encoder(pixel_values)))
    torch.testing.assert_close(ours, expected)
    assert family.vision_provenance()["vision_feature_layer"] == -2


@pytest.mark.parametrize("hw", [(480, 270), (240, 320)])  # portrait: Pillow resizes vertically first
def test_frames_match_the_image_processor_at_internvl3s_tile_size(tiny_internvl, hw):
    """The replica's 64 px tile is in the conformance suite; the same numbers at InternVL3's 448 px."""
    size = 448
    replica = AutoImageProcessor.from_pretrained(tiny_internvl)
    image_processor = GotOcr2ImageProcessorPil(**{**replica.to_dict(), "size": {"height": size, "width": size}})
    spec = FramePreprocess.from_hf(image_processor)
    assert spec.resize_hw == (size, size) and spec.crop_hw is None and spec.mean == (0.485, 0.456, 0.406)
    frame = random_frame(*hw, seed=2)
    expected = image_processor(Image.fromarray(frame), return_tensors="pt", crop_to_patches=False)["pixel_values"]
    ours = normalize(resize_and_crop(torch.from_numpy(frame[None]), spec), spec, torch.float32)
    assert ours.shape == expected.shape == (1, 3, size, size)
    levels = (ours - expected).abs() * torch.tensor(spec.std).view(1, 3, 1, 1) * 255
    assert levels.max() <= 1.001, f"max {levels.max():.2f} uint8 levels apart"
    assert levels.mean() <= 0.01


def test_caches_record_tokens_before_the_pixel_shuffle(tiny_internvl):
    family = load_family(str(tiny_internvl))
    vision = family.vision_provenance()
    assert vision["downsample_ratio"] == 0.5 and vision["cached_tokens"] == "before pixel shuffle"
    assert family.frame_token_width() == 64  # D before the shuffle, not the projector's 4D
