"""Our batched torch preprocessing equals the backbone's own image processor on the same frame."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, DeepseekVLImageProcessorPil, LlavaImageProcessorPil
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from redvillm.frames import FramePreprocess, normalize, resize_and_crop

# One level of a uint8 channel after CLIP normalisation is 1/255/std ~= 0.0146.
LEVEL = 1 / 255 / min(CLIPImageProcessorPil.image_std)


def natural_frame(height, width, seed):
    """Smooth gradients, hard-edged shapes and sensor-like noise: what resampling meets in video."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.stack([x * 200 + 20, y * 180 + 40, (x + y) * 90 + 30], axis=-1)
    for _ in range(6):
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        img[top : top + rng.integers(4, height // 3), left : left + rng.integers(4, width // 3)] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def ours(frames, spec):
    return normalize(resize_and_crop(torch.from_numpy(np.stack(frames)), spec), spec, torch.float32)


PROCESSORS = {
    "llava-1.5 (336, crop)": CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
    "llava-1 (224, crop)": CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
    "pad to square": LlavaImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                            do_pad=True),
    "bilinear, fixed size": CLIPImageProcessorPil(size={"height": 192, "width": 160}, do_center_crop=False,
                                                  resample=2),
}


# DeepSeek-VL resizes the longest side (each side rounded, at least 14) and then pads to square
# with int(mean * 255): numbers its family adapter reads off the processor (families/deepseek_vl.py).
DEEPSEEK_VL = FramePreprocess(shortest_edge=None, resize_hw=None, crop_hw=None, resample="bicubic",
                              pad_to_square=False, rescale_factor=1 / 255, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                              longest_edge=384, min_edge=14, pad_resized_to_square=True)
PROCESSORS["deepseek-vl (384, resize then pad)"] = DeepseekVLImageProcessorPil()
SPECS = {"deepseek-vl (384, resize then pad)": DEEPSEEK_VL}  # the rest: FramePreprocess.from_hf


@pytest.mark.parametrize("name", PROCESSORS)
@pytest.mark.parametrize("hw", [(240, 320), (480, 270), (336, 336), (100, 150), (1080, 1920)])
def test_matches_backbone_processor(name, hw):
    processor = PROCESSORS[name]
    spec = SPECS.get(name) or FramePreprocess.from_hf(processor)
    frames = [natural_frame(*hw, seed) for seed in range(3)]
    reference = processor([Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    mine = ours(frames, spec)
    assert mine.shape == reference.shape
    diff = (mine - reference).abs()
    # Pillow's fixed-point filter vs torch's float one: a rounding tie may land one level apart.
    assert diff.max() <= 2.01 * LEVEL, f"max diff {diff.max() / LEVEL:.2f} levels"
    mean_tolerance = 0.02 if spec.resample == "bicubic" else 0.25  # LLaVA resizes bicubic
    assert diff.mean() <= mean_tolerance * LEVEL, f"mean diff {diff.mean() / LEVEL:.3f} levels"


def test_spec_reads_processor_numbers():
    spec = FramePreprocess.from_hf(PROCESSORS["llava-1.5 (336, crop)"])
    assert spec.shortest_edge == 336 and spec.crop_hw == (336, 336) and spec.resample == "bicubic"
    assert spec.fixed_output_hw() == (336, 336)
    assert FramePreprocess.from_hf(PROCESSORS["pad to square"]).pad_to_square


def test_longest_edge_geometry():
    assert DEEPSEEK_VL.output_hw(240, 320) == DEEPSEEK_VL.fixed_output_hw() == (384, 384)
    unpadded = FramePreprocess(**{**vars(DEEPSEEK_VL), "pad_resized_to_square": False})
    assert unpadded.output_hw(240, 320) == (288, 384) and unpadded.output_hw(10, 1000) == (14, 384)
    assert unpadded.fixed_output_hw() is None
    with pytest.raises(ValueError):
        FramePreprocess(**{**vars(DEEPSEEK_VL), "shortest_edge": 384})


def test_batch_equals_one_by_one():
    spec = FramePreprocess.from_hf(PROCESSORS["llava-1 (224, crop)"])
    frames = [natural_frame(200, 300, seed) for seed in range(4)]
    batched = ours(frames, spec)
    single = torch.cat([ours([f], spec) for f in frames])
    assert torch.equal(batched, single)
