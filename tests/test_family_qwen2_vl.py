"""Qwen2-VL and Qwen2.5-VL beyond the conformance suite (tests/test_family_conformance.py):
squashed non-square frames, the merge-group order of the cache, pooling by merge groups,
3-D rope positions of the video tokens, and --image-size."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText

from redvillm.batching import VideoSample, collate
from redvillm.errors import UserError
from redvillm.families.qwen2_vl import patchify
from redvillm.families.registry import family_for_cache, load_family
from redvillm.frames import normalize, resize_and_crop
from redvillm.model_io import build_video_llm

CPU = torch.device("cpu")
QUESTIONS = ["Which colour appeared first, red or blue?", "这个视频里的方块往哪个方向移动？"]
VARIANTS = {"qwen2_vl": (), "qwen2_5_vl": ("--variant", "qwen2_5_vl")}


@pytest.fixture(scope="session", params=VARIANTS)
def tiny_qwen(request, tiny_model):
    return tiny_model(request.param, "tiny_qwen2_vl", *VARIANTS[request.param])


def our_pixels(family, image: np.ndarray) -> torch.Tensor:
    spec = family.frame_preprocess()
    return normalize(resize_and_crop(torch.from_numpy(image)[None], spec), spec, torch.float32)  # (1, 3, S, S)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_frame_at_the_size_is_exact_and_a_non_square_one_is_squashed_as_pil_would(tiny_qwen):
    """A 4:3 frame is squashed to the square size (fixed N for every video); the reference processor
    keeps the aspect ratio, so compare against it on the frame PIL squashed."""
    family = load_family(str(tiny_qwen))
    square = random_image(224, 224, seed=1)
    reference = AutoImageProcessor.from_pretrained(tiny_qwen)(images=Image.fromarray(square), return_tensors="pt")
    torch.testing.assert_close(patchify(our_pixels(family, square), 14, 2, 2), reference["pixel_values"], rtol=0,
                               atol=1e-6)
    frame = random_image(240, 320, seed=2)
    squashed = np.asarray(Image.fromarray(frame).resize((224, 224), Image.BICUBIC))
    expected = AutoImageProcessor.from_pretrained(tiny_qwen)(images=Image.fromarray(squashed), return_tensors="pt")
    one_level = 1 / 255 / min(family.frame_preprocess().std)
    difference = (patchify(our_pixels(family, frame), 14, 2, 2) - expected["pixel_values"]).abs()
    assert difference.max() <= one_level + 1e-5 and (difference > 1e-5).float().mean() < 0.01


def test_cached_tokens_are_in_the_order_the_merger_reads(tiny_qwen):
    """Qwen2.5-VL's tower runs in window order; the cache must hold the spatial (merge-group) order."""
    family = load_family(str(tiny_qwen))
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen).eval()
    encoder = family.load_frame_encoder(CPU, torch.float32)
    pixels = our_pixels(family, random_image(224, 224, seed=3))
    with torch.no_grad():
        tokens = encoder(torch.cat([pixels, pixels.flip(-1)]))  # (2, N, D): two frames at once
        merged = torch.cat(model.model.get_image_features(
            patchify(torch.cat([pixels, pixels.flip(-1)]), 14, 2, 2),
            torch.tensor([[1, 16, 16]] * 2)).pooler_output)  # (2 * N / 4, K)
        ours = model.model.visual.merger(tokens.reshape(-1, tokens.shape[-1]))
        raw = model.model.visual(patchify(pixels, 14, 2, 2), grid_thw=torch.tensor([[1, 16, 16]])).last_hidden_state
    assert tokens.shape == (2, 256, model.config.vision_config.hidden_size if family.name == "qwen2_5_vl"
                            else model.config.vision_config.embed_dim)
    torch.testing.assert_close(ours, merged, rtol=1e-5, atol=1e-5)
    if family.name == "qwen2_5_vl":  # the tower's raw output really is permuted: the test above can fail
        assert not torch.allclose(raw, tokens[0], atol=1e-3)


def test_pooling_keeps_merge_groups(tiny_qwen):
    family = load_family(str(tiny_qwen))
    tokens = torch.randn(5, 16, 3)  # (T, N, D): a 4x4 grid of 3-wide tokens, 4 merge groups
    temporal, spatial = family.pool(tokens)
    groups = tokens.reshape(5, 4, 12)  # (T, G, 4D): 4 consecutive tokens form one merge group
    assert temporal.shape == (5, 12) and spatial.shape == (4, 12)
    torch.testing.assert_close(temporal, groups.mean(1))
    torch.testing.assert_close(spatial, groups.mean(0))


def test_video_tokens_get_3d_rope_positions(tiny_qwen):
    """Temporal tokens: one time step each; spatial tokens: the image grid (a batch of two videos
    with different T, left-padded: their generation equals one-by-one in the conformance suite)."""
    llm = build_video_llm(str(tiny_qwen), "both", "copy", CPU, torch.float32)
    width = 4 * (llm.backbone.config.vision_config.hidden_size if llm.backbone.config.model_type == "qwen2_5_vl"
                 else llm.backbone.config.vision_config.embed_dim)
    generator = torch.Generator().manual_seed(0)
    samples = [VideoSample(llm.chat.encode(q), torch.randn(t, width, generator=generator),
                           torch.randn(64, width, generator=generator)) for q, t in zip(QUESTIONS, (3, 5))]
    pad = llm.chat.tokenizer.pad_token_id
    batch = collate(samples, llm.adapter.layout, llm.chat.placeholder_id, pad, padding_side="left", with_labels=False)
    extra = llm.backbone_inputs(batch)
    positions, _ = llm.backbone.model.get_rope_index(
        extra["input_ids"], mm_token_type_ids=extra["mm_token_type_ids"], image_grid_thw=extra["image_grid_thw"],
        video_grid_thw=extra["video_grid_thw"], attention_mask=batch.attention_mask)
    row = positions[:, 1]  # (3, L) for the 5-frame video
    video = (extra["mm_token_type_ids"][1] == 2).nonzero().squeeze(-1)
    image = (extra["mm_token_type_ids"][1] == 1).nonzero().squeeze(-1)
    assert len(video) == 5 and len(image) == 64
    steps = row[0, video].diff()
    assert (steps > 0).all() and len(set(steps.tolist())) == 1  # evenly spaced in time
    assert (row[1, video] == row[1, video[0]]).all()
    assert sorted(set(row[1, image].tolist())) == list(range(row[1, image].min(), row[1, image].min() + 8))


def test_image_size_must_fit_the_patch_grid(tiny_qwen):
    assert load_family(str(tiny_qwen)).vision_provenance()["image_size"] == 224  # the default, recorded in caches
    assert load_family(str(tiny_qwen), image_size=448).frame_preprocess().resize_hw == (448, 448)
    with pytest.raises(UserError, match="multiple of 28") as err:
        load_family(str(tiny_qwen), image_size=300)
    assert "\n" not in str(err.value)


def test_a_qwen_cache_does_not_impose_its_frame_size_on_another_family(tiny_qwen, tiny_llava):
    """Training LLaVA on a Qwen cache must fail as 'another model's cache', not as a bad --image-size."""
    info = {"family": tiny_qwen.name, "vision": {"image_size": 224}}
    assert family_for_cache(str(tiny_llava), None, info).name == "llava"
    assert family_for_cache(str(tiny_qwen), None, {**info, "vision": {"image_size": 448}}).image_size == 448
