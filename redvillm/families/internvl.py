"""InternVL3 (transformers' InternVLForConditionalGeneration, OpenGVLab/InternVL3-*-hf): beyond the paper.

What the image LLM feeds its projector (modeling_internvl.get_image_features): the InternViT
tower's last_hidden_state (vision_feature_layer -1; another layer: hidden_states[layer]), minus
the CLS token, laid out as its patch grid and pixel-shuffled with downsample_ratio 0.5: every
2 x 2 group of neighbouring patches becomes one token of 4D channels, in the model's own
channel order. The multi_modal_projector (LayerNorm(4D) -> Linear -> GELU -> Linear) maps
those to the LLM width K; the Qwen2 LLM uses 1-D positions.

Where the pixel shuffle goes (the design decision of this adapter):
- The cache holds the PRE-shuffle tokens: (T, N, D) with N = (448 / 14)^2 = 1024 patches per
  frame and D the vision width (1024 for InternViT-300M), exactly what the tower gives once the
  CLS token is dropped. Stage one stays the plain "frozen encoder" it is for every family.
- The shuffle is a fixed rearrangement of each frame's patch grid, so it commutes with the mean
  over time. The mean over patches must respect it: the projector takes 4D-wide groups, not
  D-wide patches. So pool() applies the model's own pixel_shuffle to each frame,
  (T, N, D) -> (T, N/4, 4D), and then takes temporal tokens = mean over the N/4 groups, (T, 4D),
  and spatial tokens = mean over T, (N/4, 4D). With one frame the spatial tokens are exactly
  the features the model projects for that image (tests/test_family_internvl.py).

Frames are single square tiles at the processor's size (448 x 448): no dynamic crop-to-patches
tiling, as InternVL itself does for video frames. The chat prompt is the processor's own: its
template writes "<IMG_CONTEXT>" for an image, which InternVLProcessor expands to "<img>" +
image_seq_length x "<IMG_CONTEXT>" + "</img>"; our one placeholder sits inside the same
"<img> ... </img>" wrapper and expands to the video tokens.

InternVLProcessor itself cannot be built without torchvision (its video half needs it), so the
tokenizer, image processor and chat template are loaded on their own (AutoTokenizer,
AutoImageProcessor, the processor's saved template), as the processor would load them.

Shape letters: T frames, N patches per frame, D vision width, K LLM width, B batch of frames.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    InternVLForConditionalGeneration,
    InternVLProcessor,
)
from transformers.models.internvl.modeling_internvl import InternVLModel

from redvillm.errors import UserError
from redvillm.chat import ChatFormat
from redvillm.families.common import (
    freeze,
    load_frozen_backbone,
    load_tower,
    mean_pool,
    one_image_messages,
    positive_layer_index,
)
from redvillm.frames import FramePreprocess

_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")


class InternVLFrameEncoder(nn.Module):
    """(B, 3, H, W) -> (B, N, D): InternVL's selected vision features for each frame, before the shuffle."""

    def __init__(self, tower: nn.Module, feature_layer: int):
        super().__init__()
        layers = tower.encoder.layer
        # -1 is the tower's last_hidden_state (after its final norm, if it has one), as in the model.
        self.position = None if feature_layer == -1 else positive_layer_index(feature_layer, len(layers))
        if self.position is not None:
            # Layers after the selected one cannot change it (one is kept to record layer 0's input).
            del layers[max(self.position, 1):]
        self.tower = freeze(tower)
        with torch.inference_mode():
            probe = self._features(torch.zeros(1, 3, *tower.config.image_size, dtype=next(tower.parameters()).dtype))
        self.num_patches, self.hidden_size = probe.shape[1], probe.shape[2]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._features(pixel_values)

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.position is None:
            hidden = self.tower(pixel_values).last_hidden_state  # (B, 1 + N, D)
        else:
            hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states[self.position]
        return hidden[:, 1:]  # (B, N, D): CLS dropped ("default" strategy)


class InternVLFamily:
    name = "internvl"
    takes_image_size = False

    def __init__(self, model: str, config, revision: str | None = None, image_size: int | None = None):
        if not isinstance(config.vision_feature_layer, int):
            raise UserError(f"{model}: vision_feature_layer {config.vision_feature_layer!r} is a list; InternVL "
                            "selects one layer")
        if config.vision_feature_select_strategy != "default":
            raise UserError(f"{model}: vision_feature_select_strategy {config.vision_feature_select_strategy!r}; "
                            "InternVL's pixel shuffle needs the CLS token dropped ('default')")
        self.model = model
        self.config = config
        self.revision = revision or getattr(config, "_commit_hash", None)
        self._image_processor = AutoImageProcessor.from_pretrained(model, revision=revision)

    def frame_preprocess(self) -> FramePreprocess:
        """Resize to the tile size (aspect not kept), rescale, normalise: the single-tile path."""
        return FramePreprocess.from_hf(self._image_processor)

    def vision_provenance(self) -> dict:
        return {
            "vision_model_type": self.config.vision_config.model_type,
            "vision_feature_layer": self.config.vision_feature_layer,
            "vision_feature_select_strategy": self.config.vision_feature_select_strategy,
            "downsample_ratio": self.config.downsample_ratio,
            "cached_tokens": "before pixel shuffle",
            "tiling": "one tile per frame",
        }

    def frame_token_width(self) -> int:
        return self.config.vision_config.hidden_size  # before the pixel shuffle

    def load_frame_encoder(self, device: torch.device, dtype: torch.dtype) -> InternVLFrameEncoder:
        tower = load_tower(AutoModel.from_config(self.config.vision_config), self.model, self.revision,
                           _TOWER_PREFIXES, InternVLForConditionalGeneration, "model.vision_tower")
        return InternVLFrameEncoder(tower.to(device=device, dtype=dtype), self.config.vision_feature_layer)

    # ----------------------------------------------------------------- stage two and inference

    def load_backbone(self, device: torch.device, dtype: torch.dtype) -> InternVLForConditionalGeneration:
        return load_frozen_backbone(InternVLForConditionalGeneration, self.model, self.revision, device, dtype,
                                    drop=("model.vision_tower",))

    def projector(self, backbone: InternVLForConditionalGeneration) -> nn.Module:
        """g_z: the image LLM's own multi_modal_projector (4D shuffled groups -> K)."""
        return backbone.model.multi_modal_projector

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, N, D) -> temporal tokens (T, 4D) (mean over groups), spatial tokens (N/4, 4D) (mean over time)."""
        return mean_pool(self.pixel_shuffle(tokens.float()))  # via (T, N/4, 4D)

    def pixel_shuffle(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, N, D) -> (T, N/4, 4D): each frame's grid through the model's own pixel shuffle."""
        frames, patches, width = tokens.shape
        side = int(patches**0.5)
        grid = tokens.reshape(frames, side, side, width)  # (T, √N, √N, D), as get_image_features lays it out
        # InternVLModel.pixel_shuffle never reads `self`: calling it keeps the model's own channel order.
        shuffled = InternVLModel.pixel_shuffle(None, grid, scale_factor=self.config.downsample_ratio)
        return shuffled.reshape(frames, -1, shuffled.shape[-1])

    def chat_format(self) -> ChatFormat:
        tokenizer = AutoTokenizer.from_pretrained(self.model, revision=self.revision)
        processor_dict, _ = InternVLProcessor.get_processor_dict(self.model, revision=self.revision)
        template = processor_dict.get("chat_template") or tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        try:
            wrap = (tokenizer.start_image_token, tokenizer.context_image_token, tokenizer.end_image_token)
        except AttributeError:
            raise UserError(f"{self.model}: its tokenizer does not name InternVL's image tokens "
                            "(start_image_token, context_image_token, end_image_token)") from None
        if template is None:
            raise UserError(f"{self.model}: no chat template in its processor or tokenizer files")
        placeholder_id = tokenizer.convert_tokens_to_ids(wrap[1])
        if placeholder_id != self.config.image_token_id:
            raise UserError(f"{self.model}: tokenizer's {wrap[1]} is id {placeholder_id}, config.image_token_id "
                            f"is {self.config.image_token_id}")
        return ChatFormat(tokenizer, _OneImagePrompt(tokenizer, template, *wrap), one_image_messages(), placeholder_id)

    def backbone_inputs(self, batch) -> dict:
        return {}  # 1-D positions: inputs_embeds and the attention mask say everything


class _OneImagePrompt:
    """apply_chat_template for ChatFormat: the processor's template, its image token wrapped as the
    processor wraps one image ("<img>" + tokens + "</img>"), with one context token standing for all."""

    def __init__(self, tokenizer, template: str, start: str, image_token: str, end: str):
        self.tokenizer, self.template = tokenizer, template
        self.image_token, self.wrapped = image_token, f"{start}{image_token}{end}"

    def __call__(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        text = self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
        return text.replace(self.image_token, self.wrapped)
