"""Qwen2-VL and Qwen2.5-VL (Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration).

What the image LLM feeds its LLM (modeling_qwen2_vl / modeling_qwen2_5_vl): the image is
patchified (14 px patches, each repeated over a temporal patch of 2, patches of one 2x2 merge
group contiguous), the ViT runs over them, and `visual.merger` (LayerNorm/RMSNorm per patch, then
an MLP on the 4*D concatenation of each 2x2 group) gives one LLM token per group. The LLM places
vision tokens with 3-D rope (time, height, width) built from `mm_token_type_ids` and the grids.

How RED-VILLM maps onto that:
- Frames are images at a fixed square size (`--image-size`, default 224: a 16x16 patch grid,
  N = 256 pre-merge tokens, 64 after the merger). The cache holds the ViT's last-block tokens
  in merge-group order, the order the merger reads them. Qwen2.5-VL's tower works in window
  order; we let its own forward restore the order (it un-permutes the merger's output), by
  swapping the merger for a reshape into groups during extraction.
- Pooling respects the merge groups: each frame's N tokens are N/4 groups of 4*D; spatial
  tokens are the time-mean of the groups (N/4, 4D), temporal tokens the mean over groups of
  each frame (T, 4D). g_z is the merger itself (it takes 4*D), g_t a copy of it.
- Positions come from the backbone's own `get_rope_index`: the temporal tokens form a video of
  T one-token frames (grid T x 2 x 2 before the merge), the spatial tokens an image (grid
  1 x H x W), both inside the chat template's <|vision_start|> ... <|vision_end|>.

Preprocessing without torchvision: transformers' Qwen processors need torchvision for their
video half, so the frame is resized and normalised by redvillm.frames (bicubic, CLIP mean/std,
as Qwen2VLImageProcessor) and patchified here; tests/test_family_qwen2_vl.py checks both against
the reference image processor.

Shape letters: B frames, N patches, D vision width, G = N / 4 merge groups, K LLM width.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoTokenizer,
)

from redvillm.errors import UserError
from redvillm.chat import ChatFormat
from redvillm.families.common import freeze, load_frozen_backbone, load_tower, mean_pool, one_image_messages
from redvillm.frames import FramePreprocess

DEFAULT_IMAGE_SIZE = 224
_TOWER_PREFIXES = ("model.visual.", "visual.")
TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values


class _MergeGroups(nn.Module):
    """Stands in for the merger during extraction: (N, D) -> (G, 4D), the groups it would read."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.width)


class QwenFrameEncoder(nn.Module):
    """(B, 3, S, S) pixel values -> (B, N, D): last-block ViT tokens in merge-group order."""

    def __init__(self, tower: nn.Module, image_size: int):
        super().__init__()
        config = tower.config
        self.patch, self.merge, self.temporal_patch = config.patch_size, config.spatial_merge_size, config.temporal_patch_size
        self.grid = image_size // self.patch
        self.num_patches = self.grid * self.grid
        self.hidden_size = tower.merger.ln_q.weight.shape[0]
        tower.merger = _MergeGroups(self.hidden_size * self.merge**2)
        self.tower = freeze(tower)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        frames = pixel_values.shape[0]
        patches = patchify(pixel_values, self.patch, self.merge, self.temporal_patch)  # (B * N, 3 * tp * p * p)
        grid_thw = torch.tensor([[1, self.grid, self.grid]] * frames, device=pixel_values.device)
        groups = self.tower(patches, grid_thw=grid_thw).pooler_output  # (B * G, 4D), spatial order
        return groups.reshape(frames, self.num_patches, self.hidden_size)


def patchify(pixel_values: torch.Tensor, patch: int, merge: int, temporal_patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * H/p * W/p, C * tp * p * p) in Qwen2VLImageProcessor's layout: patches of
    one merge group contiguous, each patch's pixels (C, tp, p, p) with the image repeated over tp."""
    b, c, h, w = pixel_values.shape
    x = pixel_values.reshape(b, c, h // patch // merge, merge, patch, w // patch // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh, gw, mh, mw, C, ph, pw)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal_patch, patch, patch)  # (..., C, tp, ph, pw)
    return x.reshape(-1, c * temporal_patch * patch * patch)


class MergerProjector(nn.Module):
    """g_z: the backbone's own merger on pooled groups, (..., 4D) -> (..., K)."""

    def __init__(self, merger: nn.Module):
        super().__init__()
        self.merger = merger
        self.width = merger.ln_q.weight.shape[0]  # D

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        projected = self.merger(groups.reshape(-1, self.width))  # (G * ..., K)
        return projected.reshape(*groups.shape[:-1], projected.shape[-1])


class Qwen2VLFamily:
    """One adapter for model_type qwen2_vl and qwen2_5_vl: the differences live in transformers."""

    takes_image_size = True

    def __init__(self, model: str, config, revision: str | None = None, image_size: int | None = None):
        self.model, self.config = model, config
        self.name = config.model_type
        self.revision = revision or getattr(config, "_commit_hash", None)
        vision = config.vision_config
        self.merge = vision.spatial_merge_size
        self.image_size = image_size or DEFAULT_IMAGE_SIZE
        factor = vision.patch_size * self.merge
        if self.image_size % factor:
            raise UserError(f"--image-size {self.image_size}: {model} needs a multiple of {factor} "
                            f"(patch {vision.patch_size} x merge {self.merge}), e.g. {DEFAULT_IMAGE_SIZE} or 448")
        self._image_processor = AutoImageProcessor.from_pretrained(model, revision=revision)

    def frame_preprocess(self) -> FramePreprocess:
        """The image processor's resampling and normalisation, at a fixed square size (no crop)."""
        numbers = FramePreprocess.from_hf(self._image_processor)  # Qwen's own size is a pixel budget: replaced
        return dataclasses.replace(numbers, shortest_edge=None, resize_hw=(self.image_size, self.image_size),
                                   crop_hw=None, pad_to_square=False)

    def vision_provenance(self) -> dict:
        return {
            "vision_model_type": self.config.vision_config.model_type,
            "image_size": self.image_size,
            "tokens": "last block, before the merger, merge-group order",
        }

    def frame_token_width(self) -> int:
        vision = self.config.vision_config  # Qwen2-VL names the ViT width embed_dim, Qwen2.5-VL hidden_size
        return vision.embed_dim if self.config.model_type == "qwen2_vl" else vision.hidden_size

    def load_frame_encoder(self, device: torch.device, dtype: torch.dtype) -> QwenFrameEncoder:
        tower = load_tower(_tower_class(self.config)._from_config(self.config.vision_config), self.model,
                           self.revision, _TOWER_PREFIXES, AutoModelForImageTextToText, "model.visual")
        return QwenFrameEncoder(tower.to(device=device, dtype=dtype), self.image_size)

    # ----------------------------------------------------------------- stage two and inference

    def load_backbone(self, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """The image LLM, frozen; the vision tower keeps only its merger (the projector)."""
        return load_frozen_backbone(AutoModelForImageTextToText, self.model, self.revision, device, dtype,
                                    drop=("model.visual.blocks", "model.visual.patch_embed"))

    def projector(self, backbone: nn.Module) -> nn.Module:
        return MergerProjector(backbone.model.visual.merger)

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, N, D) -> temporal (T, 4D) (mean over merge groups), spatial (G, 4D) (mean over time)."""
        frames, patches, width = tokens.shape
        return mean_pool(tokens.reshape(frames, patches // self.merge**2, width * self.merge**2))  # (T, G, 4D)

    def chat_format(self) -> ChatFormat:
        tokenizer = AutoTokenizer.from_pretrained(self.model, revision=self.revision)
        template = tokenizer.chat_template or _processor_chat_template(self.model, self.revision)

        def apply(messages, **kwargs):
            return tokenizer.apply_chat_template(messages, chat_template=template, **kwargs)

        return ChatFormat(tokenizer, apply, one_image_messages(), self.config.image_token_id)

    def backbone_inputs(self, batch) -> dict:
        """What the backbone's get_rope_index needs: per row, the temporal tokens are a video of
        T one-token frames, the spatial tokens a G-token image (both in units before the merge)."""
        slots = batch.input_ids == self.config.image_token_id  # (B, L)
        types = torch.full_like(batch.input_ids, TEXT)
        images, videos = [], []
        for row in range(batch.input_ids.shape[0]):
            at = slots[row].nonzero().squeeze(-1)
            frames = int(batch.temporal_mask[row].sum()) if batch.temporal is not None else 0
            types[row, at[:frames]] = VIDEO
            types[row, at[frames:]] = IMAGE
            if frames:
                videos.append([frames, self.merge, self.merge])
            if batch.spatial is not None:
                side = math.isqrt(batch.spatial.shape[1])
                images.append([1, side * self.merge, side * self.merge])
        grids = {"image_grid_thw": images, "video_grid_thw": videos}
        extra = {k: torch.tensor(v, device=batch.input_ids.device) for k, v in grids.items() if v}
        return {"input_ids": batch.input_ids, "mm_token_type_ids": types, **extra}


def _tower_class(config) -> type[nn.Module]:
    """The vision transformer class of the checkpoint's own architecture (AutoModel maps only 2.5's)."""
    if config.model_type == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel,
        )

        return Qwen2_5_VisionTransformerPretrainedModel
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        Qwen2VisionTransformerPretrainedModel,
    )

    return Qwen2VisionTransformerPretrainedModel


def _processor_chat_template(model: str, revision: str | None) -> str:
    """Checkpoints whose tokenizer has no template keep the processor's (chat_template.json/.jinja),
    read the way the processor reads it (get_processor_dict needs no torchvision)."""
    from transformers import ProcessorMixin

    template = ProcessorMixin.get_processor_dict(model, revision=revision)[0].get("chat_template")
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise UserError(f"{model}: no chat template (tokenizer_config.json, chat_template.jinja or chat_template.json)")
    return template


__all__ = ["Qwen2VLFamily", "QwenFrameEncoder", "MergerProjector", "patchify"]
