"""LLaVA-OneVision (transformers' LlavaOnevisionForConditionalGeneration): llava-onevision-qwen2-*-hf.

What the image LLM does (modeling_llava_onevision.py):
- features: SigLIP's hidden_states[vision_feature_layer] (-1, the last of the 26 layers the
  conversion kept; before the post-layernorm), all tokens ("full": SigLIP has no CLS), through
  the two-layer GELU `multi_modal_projector` (g_z);
- one image alone in a prompt: the any-resolution tiles (image_grid_pinpoints, up to 6 x 6
  tiles of 384 px) beside a base tile of the whole image squashed to 384 x 384, the tiles
  unpadded, scaled down past "anyres_max_9" and given `image_newline` after every row;
- several images in a prompt: each is its base tile only (729 tokens) followed by one
  `image_newline`;
- a video: every frame is a base tile, projected, pooled 2 x 2 (bilinear, 27 -> 14 a side), and
  one `image_newline` follows all the frames.

What redvillm does: one base tile per frame, squashed to the tile size as the video processor
does, 729 x 1152 tokens cached per frame (SigLIP-so400m at 384 px). No tiling: tiles exist for
detail in single images, their number follows each image's aspect ratio (so N would differ
between videos) and would multiply N by up to ten; the model's own video and multi-image paths
use the base tile alone. No 2 x 2 pooling either: the paper pools over time and over tokens and
sends the means through g_z, as the image LLM sends one image. After the video tokens comes the
backbone's own `image_newline`, once, as after every image of a multi-image prompt and after a
video: so one frame through our path is exactly the model's own forward of that frame as one of
several images (tests/test_family_llava_onevision.py).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, LlavaOnevisionForConditionalGeneration
from transformers.processing_utils import ProcessorMixin

from redvillm.errors import UserError
from redvillm.families.chat import QUESTION_SLOT, ChatFormat
from redvillm.families.common import freeze, load_submodule_state, strip_prefix
from redvillm.families.llava import LlavaFrameEncoder
from redvillm.frames import _PIL_RESAMPLE, FramePreprocess

_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")


class LlavaOnevisionFamily:
    name = "llava_onevision"
    takes_image_size = False

    def __init__(self, model: str, config, revision: str | None = None, image_size: int | None = None):
        if image_size is not None:
            raise UserError(f"{model}: LLaVA-OneVision frames are its base tile, at its processor's own size; "
                            "--image-size is for families with a free resolution (Qwen2-VL, Qwen2.5-VL)")
        self.model, self.config = model, config
        self.revision = revision or getattr(config, "_commit_hash", None)
        self._image_processor = AutoImageProcessor.from_pretrained(model, revision=revision)

    def frame_preprocess(self) -> FramePreprocess:
        """The base tile: the whole frame squashed to the tile size (no padding: the processor's
        do_pad pads tile lists for batching, not images to squares), rescaled, normalised."""
        processor = self._image_processor
        size = dict(processor.size.items()) if hasattr(processor.size, "items") else vars(processor.size)
        side = size.get("shortest_edge")
        tile = (size["height"], size["width"]) if size.get("height") else (side, side)
        resample = _PIL_RESAMPLE.get(int(getattr(processor.resample, "value", processor.resample)))
        if resample is None or tile[0] is None:
            raise UserError(f"{self.model}: image processor with size {size} and resample {processor.resample!r}: "
                            "redvillm needs a fixed tile size and bicubic or bilinear resizing")
        return FramePreprocess(
            shortest_edge=None, resize_hw=tuple(tile), crop_hw=None, resample=resample, pad_to_square=False,
            rescale_factor=float(processor.rescale_factor) if processor.do_rescale else 1.0,
            mean=tuple(float(x) for x in processor.image_mean) if processor.do_normalize else (0.0, 0.0, 0.0),
            std=tuple(float(x) for x in processor.image_std) if processor.do_normalize else (1.0, 1.0, 1.0),
        )

    def vision_provenance(self) -> dict:
        return {
            "vision_model_type": self.config.vision_config.model_type,
            "vision_feature_layer": self.config.vision_feature_layer,
            "vision_feature_select_strategy": self.config.vision_feature_select_strategy,
            "tiles": "base tile only",
        }

    def frame_token_width(self) -> int:
        layers = self.config.vision_feature_layer
        return self.config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))

    def load_frame_encoder(self, device: torch.device, dtype: torch.dtype) -> LlavaFrameEncoder:
        return LlavaFrameEncoder(self._load_tower().to(device=device, dtype=dtype), self.config.vision_feature_layer,
                                 self.config.vision_feature_select_strategy)

    # ----------------------------------------------------------------- stage two and inference

    def load_backbone(self, device: torch.device, dtype: torch.dtype) -> LlavaOnevisionForConditionalGeneration:
        placement = {}
        if device.type == "cuda" and importlib.util.find_spec("accelerate") is not None:
            placement = {"device_map": {"": str(device)}}
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(self.model, revision=self.revision,
                                                                       dtype=dtype, **placement)
        model.model.vision_tower = None  # video tokens come from the cache
        return freeze(model.to(device))

    def projector(self, backbone: LlavaOnevisionForConditionalGeneration) -> nn.Module:
        """g_z: the image LLM's own two-layer projector (D -> K)."""
        return backbone.model.multi_modal_projector

    def video_suffix(self, backbone: LlavaOnevisionForConditionalGeneration) -> torch.Tensor:
        """(1, K): the backbone's image_newline, put once after the video tokens."""
        return backbone.model.image_newline.detach()[None]

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, N, D) -> temporal tokens (T, D) (mean over patches), spatial tokens (N, D) (mean over time)."""
        tokens = tokens.float()
        return tokens.mean(dim=1), tokens.mean(dim=0)

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

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION_SLOT}]}]
        return ChatFormat(tokenizer, apply, messages, self.config.image_token_id)

    def backbone_inputs(self, batch) -> dict:
        return {}  # 1-D positions

    def _load_tower(self) -> nn.Module:
        state = load_submodule_state(self.model, _TOWER_PREFIXES, self.revision)
        tower = AutoModel.from_config(self.config.vision_config)
        # transformers 4 checkpoints nest SigLIP's tensors under "vision_model." once more.
        for candidate in (state, strip_prefix(state, "vision_model.")):
            if candidate:
                missing, unexpected = tower.load_state_dict(candidate, strict=False)
                if not missing and not unexpected:
                    return tower
        return LlavaOnevisionForConditionalGeneration.from_pretrained(self.model, revision=self.revision).model.vision_tower
