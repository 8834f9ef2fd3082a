"""DeepSeek-VL 7B (transformers' DeepseekVLHybridForConditionalGeneration): deepseek-vl-7b-chat/-base.

Two vision towers look at every image (modeling_deepseek_vl_hybrid.get_image_features):
- low resolution: SigLIP-L at 384 px, last_hidden_state (every patch, after post_layernorm, no
  pooling head): 24 x 24 = 576 tokens, D_low = 1024 wide;
- high resolution: SAM-B at 1024 px; its last_hidden_state plus high_res_vision_alpha times its
  global-attention layer's hidden state through a second neck, both brought by
  high_res_vision_proj (interpolate, two stride-2 convs) onto the SAME 24 x 24 grid:
  576 tokens, D_high = 4 x 256 = 1024 wide.
The aligner takes the two per token: a Linear for each (D_low -> K/2, D_high -> K/2),
concatenated to K, GELU, Linear K -> K.

What the cache holds, and why pooling it is the paper's method: the aligner's two inputs,
concatenated per token into one (T, N, D_low + D_high) array (N = 576, D = 2048 for the 7B;
provenance "feature_split" records where SigLIP ends). The paper pools the frozen encoder's
frame tokens - what the projector takes - and sends the means through the projector. Both
streams sit on one token grid and the aligner takes them per token, so one token of this array
is exactly one aligner input; its mean over T (or N) is the pair of the two streams' means on
the same positions. g_z is the aligner fed that array split back into its two inputs; g_t is
its copy.

Frames: the processor resizes the longest side to the high size (bicubic), pads it to square
with int(high mean * 255), and derives the low-resolution image by resizing that padded uint8
image (the 7B: bilinear) - each then normalised with its own mean and std. So stage one's
geometry is the high-resolution one, and frames reach the encoder as unnormalised levels
0..255 (exact integers in float16 and bfloat16 too); the encoder makes both pixel tensors from
them (pixel_values below), as the processor does.

Shape letters: B frames, N tokens per frame, D = D_low + D_high, K LLM width.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModel, DeepseekVLHybridForConditionalGeneration
from transformers.models.deepseek_vl_hybrid.modeling_deepseek_vl_hybrid import (
    DeepseekVLHybridModel,
    DeepseekVLSamVisionNeck,
    DeepseekVLSamVisionProj,
)

from redvillm.errors import UserError
from redvillm.chat import ChatFormat
from redvillm.families.common import (
    freeze,
    load_frozen_backbone,
    load_submodule_state,
    mean_pool,
    processor_chat_format,
    strip_prefix,
)
from redvillm.frames import FramePreprocess, normalize, resize_and_crop

log = logging.getLogger(__name__)

_TOWERS = ("vision_model", "high_res_vision_model", "high_res_vision_neck", "high_res_vision_proj")


class HybridTowers(nn.Module):
    """The vision half of DeepseekVLHybridModel under its own attribute names (so its weights and its
    get_high_res_image_features apply unchanged): SigLIP, SAM, SAM's second neck, the projection, alpha."""

    def __init__(self, config):
        super().__init__()
        vision_config = copy.deepcopy(config.vision_config)
        vision_config.vision_use_head = False  # the aligner reads last_hidden_state, never the pooled output
        high = config.high_res_vision_config
        self.global_attn_index = high.global_attn_indexes[0]
        self.vision_model = AutoModel.from_config(vision_config)
        self.high_res_vision_model = AutoModel.from_config(high)
        self.high_res_vision_neck = DeepseekVLSamVisionNeck(high)
        self.high_res_vision_proj = DeepseekVLSamVisionProj(high, output_size=vision_config.image_size //
                                                            vision_config.patch_size)
        self.high_res_vision_alpha = nn.Parameter(torch.zeros(1))

    def forward(self, low_pixels: torch.Tensor, high_pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) and (B, 3, H, W) pixel values -> (B, N, D_low + D_high): the aligner's inputs, per token."""
        low = self.vision_model(low_pixels, return_dict=True).last_hidden_state  # (B, N, D_low)
        # The model's own method (it reads only the attributes above): SAM + alpha * neck(global layer).
        high = DeepseekVLHybridModel.get_high_res_image_features(self, high_pixels).last_hidden_state  # (B, N, D_high)
        return torch.cat([low, high], dim=-1)


class DeepseekVLHybridFrameEncoder(nn.Module):
    """(B, 3, H, W) high-resolution frames as levels 0..255 -> (B, N, D_low + D_high)."""

    def __init__(self, towers: HybridTowers, low: FramePreprocess, high: FramePreprocess):
        super().__init__()
        self.towers = freeze(towers)
        self.low, self.high = low, high  # each resolution's own resize and normalisation
        size = high.fixed_output_hw()
        with torch.inference_mode():
            probe = self.forward(torch.zeros(1, 3, *size, dtype=towers.high_res_vision_alpha.dtype))
        self.num_patches, self.hidden_size = probe.shape[1], probe.shape[2]

    def pixel_values(self, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Levels (B, 3, H, W) -> (low-res, high-res) pixel values, as the image processor makes them."""
        frames = levels.round().clamp(0, 255).to(torch.uint8)  # exact: the levels are integers
        dtype = self.towers.high_res_vision_alpha.dtype
        low = resize_and_crop(frames.permute(0, 2, 3, 1), self.low)  # (B, 3, h, w) uint8, from the padded frame
        return normalize(low, self.low, dtype), normalize(frames, self.high, dtype)

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        return self.towers(*self.pixel_values(levels))


class HybridAligner(nn.Module):
    """g_z: DeepSeek-VL 7B's aligner on the cached layout, (..., D_low + D_high) -> (..., K)."""

    def __init__(self, aligner: nn.Module, low_hidden_size: int):
        super().__init__()
        self.aligner = aligner
        self.low_hidden_size = low_hidden_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.aligner(tokens[..., : self.low_hidden_size], tokens[..., self.low_hidden_size :])


class DeepseekVLHybridFamily:
    name = "deepseek_vl_hybrid"
    takes_image_size = False

    def __init__(self, model: str, config, revision: str | None = None, image_size: int | None = None):
        self.model = model
        self.config = config
        self.revision = revision or getattr(config, "_commit_hash", None)
        self._image_processor = AutoImageProcessor.from_pretrained(model, revision=revision)
        self._low, self._high = resolution_specs(self._image_processor, model)

    def frame_preprocess(self) -> FramePreprocess:
        """The high-resolution geometry; frames leave it as levels 0..255 (see the module docstring)."""
        return dataclasses.replace(self._high, rescale_factor=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                   pad_fill=self._high.fill)

    def vision_provenance(self) -> dict:
        low, high = self.config.vision_config, self.config.high_res_vision_config
        return {
            "vision_model_type": low.model_type,
            "high_res_vision_model_type": high.model_type,
            "vision_features": "SigLIP last_hidden_state ++ SAM high-res features per token (the aligner's inputs)",
            "feature_split": [low.hidden_size, 4 * high.output_channels],
            "low_res_image_size": self._low.fixed_output_hw()[0],
            "high_res_global_layer": high.global_attn_indexes[0],
        }

    def frame_token_width(self) -> int:
        return sum(self.vision_provenance()["feature_split"])

    def load_frame_encoder(self, device: torch.device, dtype: torch.dtype) -> DeepseekVLHybridFrameEncoder:
        towers = self._load_towers().to(device=device, dtype=dtype)
        return DeepseekVLHybridFrameEncoder(towers, self._low, self._high)

    # ----------------------------------------------------------------- stage two and inference

    def load_backbone(self, device: torch.device, dtype: torch.dtype) -> DeepseekVLHybridForConditionalGeneration:
        return load_frozen_backbone(DeepseekVLHybridForConditionalGeneration, self.model, self.revision, device, dtype,
                                    drop=tuple(f"model.{tower}" for tower in _TOWERS))

    def projector(self, backbone: DeepseekVLHybridForConditionalGeneration) -> nn.Module:
        """g_z: the aligner, fed the cached tokens split back into its SigLIP and SAM inputs."""
        return HybridAligner(backbone.model.aligner, self.config.vision_config.hidden_size)

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mean_pool(tokens)  # (T, N, D) -> (T, D), (N, D)

    def chat_format(self) -> ChatFormat:
        return processor_chat_format(self.model, self.revision, self.config.image_token_id)

    def backbone_inputs(self, batch) -> dict:
        return {}  # 1-D positions (Llama): inputs_embeds and the attention mask say everything

    def _load_towers(self) -> HybridTowers:
        towers = HybridTowers(self.config)
        low = load_submodule_state(self.model, ("model.vision_model.", "vision_model."), self.revision)
        # One read for SAM, its second neck, the projection and alpha: "model.", "neck.", "proj.", "alpha".
        high = load_submodule_state(self.model, ("model.high_res_vision_", "high_res_vision_"), self.revision)
        high = {f"high_res_vision_{k}": v for k, v in high.items()}
        # transformers 4 checkpoints nest SigLIP's weights under "vision_model." once more.
        for siglip in (low, strip_prefix(low, "vision_model.")):
            state = {f"vision_model.{k}": v for k, v in siglip.items() if not k.startswith("head.")}
            missing, unexpected = towers.load_state_dict({**state, **high}, strict=False)
            if low and high and not missing and not unexpected:
                return towers
        log.info("vision tower keys differ from the checkpoint's (%d missing, %d unexpected); "
                 "loading the whole model with from_pretrained instead", len(missing), len(unexpected))
        full = DeepseekVLHybridForConditionalGeneration.from_pretrained(self.model, revision=self.revision).model
        for tower in _TOWERS:
            setattr(towers, tower, getattr(full, tower))
        towers.high_res_vision_alpha = full.high_res_vision_alpha
        return towers


def resolution_specs(processor, model: str = "the checkpoint") -> tuple[FramePreprocess, FramePreprocess]:
    """DeepSeek-VL 7B's image processor as two FramePreprocess: (low resolution, high resolution)."""
    if not (processor.do_resize and processor.do_pad):
        raise UserError(f"{model}: its image processor must resize and pad (do_resize, do_pad) for a fixed frame "
                        "size; redvillm cannot cache frames of varying size")
    sizes = {}
    for which, size in (("size", processor.size), ("high_res_size", processor.high_res_size)):
        height, width = size["height"], size["width"]
        if height is None or height != width:
            raise UserError(f"{model}: its image processor's {which} must be square, got {size}")
        sizes[which] = height
    try:
        low = FramePreprocess.from_hf(processor)  # resample, rescale, mean and std of the low resolution
    except ValueError as err:
        raise UserError(f"{model}: {err}") from None
    geometry = dict(shortest_edge=None, resize_hw=None, crop_hw=None, pad_to_square=False,
                    min_edge=int(processor.min_size), pad_resized_to_square=True)
    low = dataclasses.replace(low, longest_edge=sizes["size"], pad_fill=tuple(processor.background_color), **geometry)
    resample = int(getattr(processor.high_res_resample, "value", processor.high_res_resample))
    if resample not in (2, 3):
        raise UserError(f"{model}: unsupported high_res_resample {processor.high_res_resample!r}: bicubic or bilinear")
    normalise = bool(processor.do_normalize)
    high = dataclasses.replace(low, longest_edge=sizes["high_res_size"], resample={2: "bilinear", 3: "bicubic"}[resample],
                               mean=tuple(float(x) for x in processor.high_res_image_mean) if normalise else (0.0,) * 3,
                               std=tuple(float(x) for x in processor.high_res_image_std) if normalise else (1.0,) * 3,
                               pad_fill=tuple(processor.high_res_background_color))
    return low, high
