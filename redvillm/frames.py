"""Frame preprocessing: the backbone's own image preprocessing, batched in torch.

An image LLM's processor works on one PIL image at a time (pad to square, resize, centre crop,
rescale, normalise; DeepSeek-VL resizes first and pads the result to square). For a video we
apply exactly the same steps to a (F, H, W, 3) uint8 batch with torch, in two halves:

- ``resize_and_crop`` (geometry, uint8 in and out) runs in the decode workers when the encoder
  is on CPU, or on the encoder's GPU from source-resolution frames (same code, any device);
- ``normalize`` (rescale + mean/std) runs next to the encoder, on its device and dtype.

Resizing uses torch's antialiased bicubic/bilinear filter, which follows Pillow's separable
filter, in Pillow's two passes with its rounding to uint8 after each; the result matches the
backbone's own processor to within one uint8 level on rare pixels (tests/test_frames.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

# Pillow's resample codes, as stored in HF preprocessor configs.
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class FramePreprocess:
    """Numbers that define one backbone's image preprocessing (read from its HF processor)."""

    shortest_edge: int | None  # resize so the short side has this length (aspect kept) ...
    resize_hw: tuple[int, int] | None  # ... or resize to exactly (height, width)
    crop_hw: tuple[int, int] | None  # centre crop after the resize, or None
    resample: Literal["bicubic", "bilinear"]
    pad_to_square: bool  # LLaVA's "pad" aspect mode: pad with the mean colour first
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # DeepSeek-VL's geometry (defaulted, so older call sites keep working):
    longest_edge: int | None = None  # ... or resize so the long side has this length (aspect kept)
    min_edge: int = 1  # with longest_edge: no side shorter than this after the resize
    pad_resized_to_square: bool = False  # pad after the resize (DeepSeek-VL), not before (LLaVA)
    # The padding colour as uint8 levels; None pads with int(mean * 255), as every processor does.
    # Only needed where `mean` is not the colour's source (frames handed on unnormalised).
    pad_fill: tuple[int, int, int] | None = None

    def __post_init__(self):
        modes = [self.shortest_edge, self.resize_hw, self.longest_edge]
        if sum(mode is not None for mode in modes) != 1:
            raise ValueError("FramePreprocess needs exactly one of shortest_edge, resize_hw or longest_edge")

    @classmethod
    def from_hf(cls, processor) -> FramePreprocess:
        """Read the numbers off a transformers image processor (slow, PIL or fast variant)."""
        size = _as_dict(processor.size) if getattr(processor, "do_resize", True) else {}
        if not size:
            raise ValueError(f"{type(processor).__name__} does not resize; redvillm needs a fixed frame size")
        crop = _as_dict(processor.crop_size) if getattr(processor, "do_center_crop", False) else None
        resample = getattr(processor, "resample", 3)
        resample = _PIL_RESAMPLE.get(int(getattr(resample, "value", resample)))
        if resample is None:
            raise ValueError(f"unsupported resample mode {processor.resample!r}: bicubic or bilinear only")
        mean = tuple(float(x) for x in processor.image_mean)
        std = tuple(float(x) for x in processor.image_std)
        return cls(
            shortest_edge=size.get("shortest_edge"),
            resize_hw=(size["height"], size["width"]) if size.get("height") else None,
            crop_hw=(crop["height"], crop["width"]) if crop else None,
            resample=resample,
            pad_to_square=bool(getattr(processor, "do_pad", False)),
            rescale_factor=float(processor.rescale_factor) if processor.do_rescale else 1.0,
            mean=mean if processor.do_normalize else (0.0, 0.0, 0.0),
            std=std if processor.do_normalize else (1.0, 1.0, 1.0),
        )

    @property
    def fill(self) -> tuple[int, int, int]:
        """The colour padding adds, as uint8 levels."""
        return self.pad_fill if self.pad_fill is not None else tuple(int(m * 255) for m in self.mean)

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """Height and width of a frame of size (height, width) after preprocessing."""
        if self.crop_hw is not None:
            return self.crop_hw
        if self.pad_to_square:
            height = width = max(height, width)
        height, width = self._resized_hw(height, width)
        if self.pad_resized_to_square:
            height = width = max(height, width)
        return height, width

    def fixed_output_hw(self) -> tuple[int, int] | None:
        """The output size if it does not depend on the input's aspect ratio, else None."""
        if self.crop_hw is not None or self.resize_hw is not None:
            return self.output_hw(1, 1)
        if self.longest_edge is not None:
            return self.output_hw(1, 1) if self.pad_to_square or self.pad_resized_to_square else None
        return (self.shortest_edge, self.shortest_edge) if self.pad_to_square else None

    def _resized_hw(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_hw is not None:
            return self.resize_hw
        if self.longest_edge is not None:
            # Same arithmetic as transformers' DeepSeek-VL image processor (Python's round).
            scale = self.longest_edge / max(height, width)
            return max(round(height * scale), self.min_edge), max(round(width * scale), self.min_edge)
        # Same arithmetic as transformers' get_resize_output_image_size(default_to_square=False).
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)


def _as_dict(size) -> dict:
    if hasattr(size, "items"):
        return {k: v for k, v in size.items() if v is not None}
    return {k: v for k, v in vars(size).items() if v is not None}


def resize_and_crop(frames: torch.Tensor, spec: FramePreprocess) -> torch.Tensor:
    """(F, H, W, 3) uint8 RGB -> (F, 3, h, w) uint8, the backbone's geometry applied."""
    x = frames.permute(0, 3, 1, 2)  # (F, 3, H, W)
    if spec.pad_to_square:
        x = _pad_to_square(x, spec.fill)
    height, width = x.shape[-2:]
    new_hw = spec._resized_hw(height, width)
    if new_hw != (height, width):
        # Pillow resamples in two separable passes, rounding and clipping to uint8 in between;
        # doing the same keeps bicubic overshoot at hard edges identical. Horizontal goes first
        # unless Pillow puts the vertical pass first for these sizes (_vertical_first).
        first = (new_hw[0], width) if _vertical_first((height, width), new_hw, spec.resample) else (height, new_hw[1])
        x = _resample(x, first, spec.resample)
        x = _resample(x, new_hw, spec.resample)
    if spec.pad_resized_to_square:
        x = _pad_to_square(x, spec.fill)
    if spec.crop_hw is not None:
        x = _center_crop(x, spec.crop_hw)
    return x.contiguous()


def normalize(frames: torch.Tensor, spec: FramePreprocess, dtype: torch.dtype) -> torch.Tensor:
    """(F, 3, h, w) uint8 -> (F, 3, h, w) pixel values in `dtype`, on the frames' device."""
    x = frames.float() * spec.rescale_factor
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


@functools.lru_cache(maxsize=64)
def _vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int], mode: str) -> bool:
    """Whether Pillow resizes in_hw -> out_hw with its vertical pass first.

    Pillow 13 does when the height shrinks enough more than the width (e.g. a portrait frame to
    a square tile); the rule is internal to its C code and differs between versions. So when
    both sides change we ask the installed Pillow, once per size pair: it resizes a noise image
    of this size and we keep the pass order that reproduces it.
    """
    if in_hw[0] == out_hw[0] or in_hw[1] == out_hw[1]:
        return False  # one pass only
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (*in_hw, 3), dtype=torch.uint8, generator=generator)  # (H, W, 3)
    filter_ = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[mode]
    pillow = Image.fromarray(noise.numpy()).resize(out_hw[::-1], filter_)
    reference = torch.from_numpy(np.array(pillow)).permute(2, 0, 1).int()  # (3, h, w)
    x = noise.permute(2, 0, 1)[None]  # (1, 3, H, W)
    vertical = _resample(_resample(x, (out_hw[0], in_hw[1]), mode), out_hw, mode)[0]
    horizontal = _resample(_resample(x, (in_hw[0], out_hw[1]), mode), out_hw, mode)[0]
    return bool((vertical.int() - reference).abs().sum() < (horizontal.int() - reference).abs().sum())


def _resample(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    resized = F.interpolate(x.float(), size=size, mode=mode, antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _pad_to_square(x: torch.Tensor, fill: tuple[int, int, int]) -> torch.Tensor:
    height, width = x.shape[-2:]
    if height == width:
        return x
    side = max(height, width)
    colour = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    out = colour.expand(x.shape[0], 3, side, side).clone()
    top, left = (side - height) // 2, (side - width) // 2
    out[..., top : top + height, left : left + width] = x
    return out


def _center_crop(x: torch.Tensor, crop_hw: tuple[int, int]) -> torch.Tensor:
    height, width = x.shape[-2:]
    crop_h, crop_w = crop_hw
    if crop_h > height or crop_w > width:
        # transformers pads with zeros when the crop is larger than the image; so do we.
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = x.shape[-2:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return x[..., top : top + crop_h, left : left + crop_w]
