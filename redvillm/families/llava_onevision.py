"""LLaVA-OneVision (transformers' LlavaOnevisionForConditionalGeneration): llava-onevision-qwen2-*-hf.

What the image LLM does (modeling_llava_onevision.py):
- features: SigLIP's hidden_states[vision_feature_layer] (-1, the last of the 26 layers the
  conversion kept; before the post-layernorm), all tokens ("full": SigLIP has no CLS), through
  the two-layer GELU `multi_modal_projector` (g_z);
- one image alone in a prompt: the any-resolution tiles (image_grid_pinpoints, up to 6 x 6
  tiles of 384 px) beside a base tile of the whole image squashed to 384 x 384, the tiles
  unpadded, scaled down past "anyres_max_9" and given `image_newline` after every row;
- several images in a prompt: each is one tile only (the image padded to a square, then
  resized to 384 x 384: 729 tokens) followed by one `image_newline`;
- a video: every frame is a base tile, projected, pooled 2 x 2 (bilinear, 27 -> 14 a side), and
  one `image_newline` follows all the frames.

What redvillm does: one base tile per frame, squashed to the tile size as the video processor
does (frames are video; the multi-image path would pad them instead), 729 x 1152 tokens cached per frame (SigLIP-so400m at 384 px). No tiling: tiles exist for
detail in single images, their number follows each image's aspect ratio (so N would differ
between videos) and would multiply N by up to ten; the model's own video and multi-image paths
use the base tile alone. No 2 x 2 pooling either: the paper pools over time and over tokens and
sends the means through g_z, as the image LLM sends one image. After the video tokens comes the
backbone's own `image_newline`, once, as after every image of a multi-image prompt and after a
video: so one frame through our path is exactly the model's own forward of that frame as one of
several images (its conformance row in tests/test_family_conformance.py).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, LlavaOnevisionForConditionalGeneration
from transformers.processing_utils import ProcessorMixin

from redvillm.errors import UserError
from redvillm.chat import ChatFormat
from redvillm.families.common import load_frozen_backbone, load_tower, mean_pool, one_image_messages
from redvillm.families.llava import LlavaFrameEncoder
from redvillm.frames import FramePreprocess

_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")


class LlavaOnevisionFamily:
    name = "llava_onevision"
    takes_image_size = False

    def __init__(self, model: str, config, revision: str | None = None, image_size: int | None = None):
        self.model, self.config = model, config
        self.revision = revision or getattr(config, "_commit_hash", None)
        self._image_processor = AutoImageProcessor.from_pretrained(model, revision=revision)

    def frame_preprocess(self) -> FramePreprocess:
        """The base tile: the whole frame squashed to the tile size, rescaled, normalised. Not padded:
        this processor's do_pad pads lists of tiles for batching, not images to squares."""
        spec = dataclasses.replace(FramePreprocess.from_hf(self._image_processor), pad_to_square=False)
        side = spec.shortest_edge  # a {"shortest_edge": s} size makes the base tile s x s as well
        return spec if side is None else dataclasses.replace(spec, shortest_edge=None, resize_hw=(side, side))

    def vision_provenance(self) -> dict:
        return {
            "vision_model_type": self.config.vision_config.model_type,
            "vision_feature_layer": self.config.vision_feature_layer,
            "vision_feature_select_strategy": self.config.vision_feature_select_strategy,
            "tiles": "base tile only",
        }

    def frame_token_width(self) -> int:
        layers = self.config.vision_feature_layer  # a list of layers is concatenated along D
        return self.config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))

    def load_frame_encoder(self, device: torch.device, dtype: torch.dtype) -> LlavaFrameEncoder:
        """The same feature selection as LLaVA's (layer, "full" or "default"), on the SigLIP tower."""
        tower = load_tower(AutoModel.from_config(self.config.vision_config), self.model, self.revision,
                           _TOWER_PREFIXES, LlavaOnevisionForConditionalGeneration, "model.vision_tower")
        return LlavaFrameEncoder(tower.to(device=device, dtype=dtype), self.config.vision_feature_layer,
                                 self.config.vision_feature_select_strategy)

    # ----------------------------------------------------------------- stage two and inference

    def load_backbone(self, device: torch.device, dtype: torch.dtype) -> LlavaOnevisionForConditionalGeneration:
        return load_frozen_backbone(LlavaOnevisionForConditionalGeneration, self.model, self.revision, device, dtype,
                                    drop=("model.vision_tower",))

    def projector(self, backbone: LlavaOnevisionForConditionalGeneration) -> nn.Module:
        """g_z: the image LLM's own two-layer projector (D -> K)."""
        return backbone.model.multi_modal_projector

    def video_suffix(self, backbone: LlavaOnevisionForConditionalGeneration) -> torch.Tensor:
        """(1, K): the backbone's image_newline, put once after the video tokens."""
        return backbone.model.image_newline.detach()[None]

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mean_pool(tokens)  # (T, N, D) -> (T, D), (N, D)

    def chat_format(self) -> ChatFormat:
        """The tokenizer and the checkpoint's template, loaded on their own: AutoProcessor would
        also build the video processor, which needs torchvision."""
        tokenizer = AutoTokenizer.from_pretrained(self.model, revision=self.revision)
        template = ProcessorMixin.get_processor_dict(self.model, revision=self.revision)[0].get("chat_template")
        template = (template.get("default") if isinstance(template, dict) else template) or tokenizer.chat_template
        if not template:
            raise UserError(f"{self.model}: no chat template (chat_template.json/.jinja or tokenizer_config.json)")

        def apply(messages, **kwargs):
            return tokenizer.apply_chat_template(messages, chat_template=template, **kwargs)

        return ChatFormat(tokenizer, apply, one_image_messages(), self.config.image_token_id)

    def backbone_inputs(self, batch) -> dict:
        return {}  # 1-D positions: inputs_embeds and the attention mask say everything
