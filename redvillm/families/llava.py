"""LLaVA (transformers' LlavaForConditionalGeneration): llava-1.5 at 336 px, llava-1 style at 224 px.

What the image LLM feeds its projector (modeling_llava.get_image_features): the vision tower's
hidden_states[vision_feature_layer] (a list of layers is concatenated along D), minus the CLS
token when vision_feature_select_strategy == "default". The frame encoder below reproduces
exactly that and stops the tower at the deepest layer it needs (llava-1.5 skips the last one).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModel, LlavaForConditionalGeneration

from redvillm.chat import ChatFormat
from redvillm.families.common import (
    freeze,
    load_frozen_backbone,
    load_tower,
    mean_pool,
    positive_layer_index,
    processor_chat_format,
)
from redvillm.frames import FramePreprocess

_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")


class LlavaFrameEncoder(nn.Module):
    """(B, 3, H, W) -> (B, N, D): LLaVA's selected vision features for each frame."""

    def __init__(self, tower: nn.Module, feature_layer: int | list[int], strategy: str):
        super().__init__()
        layers = _encoder_layers(tower)
        wanted = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
        self.positions = [positive_layer_index(i, len(layers)) for i in wanted]
        # Layers after the deepest selected one cannot change the selected features.
        del layers[max(self.positions):]
        self.tower = freeze(tower)
        self.drop_cls = strategy == "default"
        with torch.inference_mode():
            probe = self._features(torch.zeros(1, 3, *_tower_image_hw(tower), dtype=_dtype(tower)))
        self.num_patches, self.hidden_size = probe.shape[1], probe.shape[2]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._features(pixel_values)

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        selected = [hidden[p][:, 1:] if self.drop_cls else hidden[p] for p in self.positions]
        return torch.cat(selected, dim=-1)  # (B, N, D)


class LlavaFamily:
    name = "llava"
    takes_image_size = False

    def __init__(self, model: str, config, revision: str | None = None, image_size: int | None = None):
        self.model = model
        self.config = config
        self.revision = revision or getattr(config, "_commit_hash", None)
        self._image_processor = AutoImageProcessor.from_pretrained(model, revision=revision)

    def frame_preprocess(self) -> FramePreprocess:
        return FramePreprocess.from_hf(self._image_processor)

    def vision_provenance(self) -> dict:
        return {
            "vision_model_type": self.config.vision_config.model_type,
            "vision_feature_layer": self.config.vision_feature_layer,
            "vision_feature_select_strategy": self.config.vision_feature_select_strategy,
        }

    def frame_token_width(self) -> int:
        """A list of feature layers is concatenated along D."""
        layers = self.config.vision_feature_layer
        return self.config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))

    def load_frame_encoder(self, device: torch.device, dtype: torch.dtype) -> LlavaFrameEncoder:
        tower = load_tower(AutoModel.from_config(self.config.vision_config), self.model, self.revision,
                           _TOWER_PREFIXES, LlavaForConditionalGeneration, "model.vision_tower")
        return LlavaFrameEncoder(tower.to(device=device, dtype=dtype), self.config.vision_feature_layer,
                                 self.config.vision_feature_select_strategy)

    # ----------------------------------------------------------------- stage two and inference

    def load_backbone(self, device: torch.device, dtype: torch.dtype) -> LlavaForConditionalGeneration:
        return load_frozen_backbone(LlavaForConditionalGeneration, self.model, self.revision, device, dtype,
                                    drop=("model.vision_tower",))

    def projector(self, backbone: LlavaForConditionalGeneration) -> nn.Module:
        """g_z: the image LLM's own alignment module (vision width D -> LLM width K)."""
        return backbone.model.multi_modal_projector

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mean_pool(tokens)  # (T, N, D) -> (T, D), (N, D)

    def chat_format(self) -> ChatFormat:
        return processor_chat_format(self.model, self.revision, self.config.image_token_id)

    def backbone_inputs(self, batch) -> dict:
        return {}  # 1-D positions: inputs_embeds and the attention mask say everything


def _encoder_layers(tower: nn.Module) -> nn.ModuleList:
    for name, module in tower.named_modules():
        if name.endswith("encoder.layers") and isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"cannot find the encoder layers of {type(tower).__name__}")


def _tower_image_hw(tower: nn.Module) -> tuple[int, int]:
    size = tower.config.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


