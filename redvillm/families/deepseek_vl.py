"""DeepSeek-VL (transformers' DeepseekVLForConditionalGeneration): deepseek-vl-1.3b-base/-chat.

What the image LLM feeds its projector (modeling_deepseek_vl.get_image_features): the SigLIP
vision model's last_hidden_state - every patch token (SigLIP has no CLS), after its
post_layernorm - through the `aligner` (Linear D -> K, GELU, Linear K -> K). The SigLIP
attention-pooling head is part of the checkpoint but its output is never used, so the frame
encoder below is built without it. deepseek-vl-1.3b: 384 px, patch 16 -> N = 576, D = 1024.

Frames: DeepSeek's processor resizes the longest side to its size (bicubic, each side rounded,
at least min_size) and then pads the resized image to square with int(mean * 255) - resize
first, pad second, the other way round from LLaVA's "pad" mode.

Positions are 1-D (a Llama LLM): the video tokens need nothing but inputs_embeds.

Shape letters: B frames, N patches, D vision width, K LLM width.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModel, DeepseekVLForConditionalGeneration

from redvillm.errors import UserError
from redvillm.chat import ChatFormat
from redvillm.families.common import freeze, load_frozen_backbone, load_tower, mean_pool, processor_chat_format
from redvillm.frames import FramePreprocess

_TOWER_PREFIXES = ("model.vision_model.", "vision_model.")


class DeepseekVLFrameEncoder(nn.Module):
    """(B, 3, H, W) -> (B, N, D): what DeepSeek-VL's aligner sees for each frame."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = freeze(tower)
        size = tower.config.image_size
        with torch.inference_mode():
            probe = self.forward(torch.zeros(1, 3, size, size, dtype=next(tower.parameters()).dtype))
        self.num_patches, self.hidden_size = probe.shape[1], probe.shape[2]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values, return_dict=True).last_hidden_state  # (B, N, D)


class DeepseekVLFamily:
    name = "deepseek_vl"
    takes_image_size = False

    def __init__(self, model: str, config, revision: str | None = None, image_size: int | None = None):
        self.model = model
        self.config = config
        self.revision = revision or getattr(config, "_commit_hash", None)
        self._image_processor = AutoImageProcessor.from_pretrained(model, revision=revision)

    def frame_preprocess(self) -> FramePreprocess:
        return frame_preprocess_from(self._image_processor, self.model)

    def vision_provenance(self) -> dict:
        vision = self.config.vision_config
        return {
            "vision_model_type": vision.model_type,
            "vision_features": "last_hidden_state",  # all patches after post_layernorm, no pooling head
            "vision_hidden_size": vision.hidden_size,
        }

    def frame_token_width(self) -> int:
        return self.config.vision_config.hidden_size

    def load_frame_encoder(self, device: torch.device, dtype: torch.dtype) -> DeepseekVLFrameEncoder:
        vision_config = copy.deepcopy(self.config.vision_config)
        vision_config.vision_use_head = False  # the aligner reads last_hidden_state, never the pooled output
        tower = load_tower(AutoModel.from_config(vision_config), self.model, self.revision, _TOWER_PREFIXES,
                           DeepseekVLForConditionalGeneration, "model.vision_model", skip=("head.",))
        return DeepseekVLFrameEncoder(tower.to(device=device, dtype=dtype))

    # ----------------------------------------------------------------- stage two and inference

    def load_backbone(self, device: torch.device, dtype: torch.dtype) -> DeepseekVLForConditionalGeneration:
        return load_frozen_backbone(DeepseekVLForConditionalGeneration, self.model, self.revision, device, dtype,
                                    drop=("model.vision_model",))

    def projector(self, backbone: DeepseekVLForConditionalGeneration) -> nn.Module:
        """g_z: DeepSeek-VL's aligner (vision width D -> LLM width K)."""
        return backbone.model.aligner

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mean_pool(tokens)  # (T, N, D) -> (T, D), (N, D)

    def chat_format(self) -> ChatFormat:
        return processor_chat_format(self.model, self.revision, self.config.image_token_id)

    def backbone_inputs(self, batch) -> dict:
        return {}  # 1-D positions: inputs_embeds and the attention mask say everything


def frame_preprocess_from(processor, model: str = "the checkpoint") -> FramePreprocess:
    """DeepSeek-VL's image processor (PIL or torchvision backend) as numbers."""
    size = processor.size
    height, width = size["height"], size["width"]
    if not processor.do_resize or height is None or height != width:
        raise UserError(f"{model}: DeepSeek-VL's image processor must resize to a square size, got {size}")
    try:
        numbers = FramePreprocess.from_hf(processor)  # resample, rescale, mean and std
    except ValueError as err:
        raise UserError(f"{model}: {err}") from None
    # DeepSeek's geometry: resize the longest side, then pad the result to square.
    spec = dataclasses.replace(numbers, shortest_edge=None, resize_hw=None, crop_hw=None, pad_to_square=False,
                               longest_edge=height, min_edge=int(processor.min_size),
                               pad_resized_to_square=bool(processor.do_pad))
    fill = tuple(int(m * 255) for m in spec.mean)  # what redvillm.frames pads with
    if spec.pad_resized_to_square and tuple(processor.background_color) != fill:
        raise UserError(f"{model}: its image processor pads with {tuple(processor.background_color)}, not the mean "
                        f"colour {fill}; redvillm cannot reproduce that preprocessing")
    return spec
