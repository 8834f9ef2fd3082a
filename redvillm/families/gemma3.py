"""Gemma 3 (transformers' Gemma3ForConditionalGeneration): google/gemma-3-{4b,12b,27b}-it.

What the image LLM does with an image (modeling_gemma3.get_image_features): the SigLIP tower's
last_hidden_state (no pooling head), its P x P patch grid (64 x 64 at 896 px, patch 14) through
Gemma3MultiModalProjector: average pooling in k x k windows down to mm_tokens_per_image = 256
tokens (k = 4), then a Gemma RMS norm (mm_soft_emb_norm), then a bias-free projection D -> K.

What is cached, and why the method stays exact: the POOLED tokens before the norm, (T, M, D)
with M = 256 (the 4B: 256 x 1152 per frame, 16 times fewer than its 4096 patches). The average
pooling is one fixed linear map applied to each frame alone, so the mean over time of pooled
frames is the pooling of the time-mean frame; and its k x k windows cut the grid into M equal
parts, so the mean over the M pooled tokens of a frame is the mean over all its P^2 patches.
Spatial tokens z (mean over T) and temporal tokens t (mean over M) are therefore exactly the
paper's, computed from the patches; only the norm (nonlinear) and the projection (learned)
come after the means, in g_z and g_t (tests/test_family_gemma3.py checks both
identities through the real projector).

g_z is the projector with its pooling split off (Gemma3SoftEmbedding: the norm, then the
projection), a copy of the checkpoint's weights; g_t is its copy, as for every family.

Attention: Gemma 3 lets the soft tokens of one image attend to each other in both directions
(token_type_ids 1 on the soft tokens; a contiguous run is one block). All video tokens
[g_t(t), g_z(z)] are marked as image tokens, so they form one block: the video is one image to
Gemma, every video token sees every other, and text stays causal. In the sliding-window layers
the block is cut to the window (1024 tokens in the -it models), as an image's would be; at
T = 100 all 356 video tokens fit. With one frame and no temporal tokens this is exactly the
backbone's image forward.

Prompt: the processor's own chat template, whose "<start_of_image>" the processor expands to
"\\n\\n<start_of_image>" + 256 x "<image_soft_token>" + "<end_of_image>\\n\\n"; ours expands it the same
way with one soft token standing for all video tokens. Answers end at <end_of_turn>, where the
-it checkpoints stop generating. Frames: the processor's square resize (bilinear, mean/std 0.5);
no pan-and-scan crops (one view per frame).

Shape letters: B frames, P patches per side, M pooled tokens per frame, D vision width, K LLM width.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoModel, AutoProcessor, Gemma3ForConditionalGeneration
from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector, Gemma3RMSNorm

from redvillm.errors import UserError
from redvillm.chat import ChatFormat
from redvillm.families.common import freeze, load_frozen_backbone, load_tower, mean_pool, one_image_messages
from redvillm.frames import FramePreprocess

_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")
END_OF_TURN = "<end_of_turn>"


def pool_patches(projector: Gemma3MultiModalProjector, hidden: torch.Tensor) -> torch.Tensor:
    """(B, P*P, D) -> (B, M, D): the projector's own average pooling, in its own reshapes."""
    frames, _, width = hidden.shape
    side = projector.patches_per_image
    grid = hidden.transpose(1, 2).reshape(frames, width, side, side).contiguous()  # (B, D, P, P)
    return projector.avg_pool(grid).flatten(2).transpose(1, 2)  # (B, M, D)


class Gemma3FrameEncoder(nn.Module):
    """(B, 3, H, W) -> (B, M, D): each frame's SigLIP patches, average-pooled as Gemma 3 pools them."""

    def __init__(self, tower: nn.Module, config):
        super().__init__()
        self.tower = freeze(tower)
        with torch.device("meta"):  # only its pooling is used: no weights allocated
            self.pooling = Gemma3MultiModalProjector(config)
        size = tower.config.image_size
        with torch.inference_mode():
            probe = self.forward(torch.zeros(1, 3, size, size, dtype=next(tower.parameters()).dtype,
                                             device=next(tower.parameters()).device))
        self.num_patches, self.hidden_size = probe.shape[1], probe.shape[2]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(pixel_values=pixel_values, return_dict=True).last_hidden_state  # (B, P*P, D)
        return pool_patches(self.pooling, hidden)


class _SoftEmbeddingNorm(Gemma3RMSNorm):
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)  # Gemma norms scale by 1 + weight: zero is the identity scale


class Gemma3SoftEmbedding(nn.Module):
    """g_z: Gemma3MultiModalProjector after its pooling, (..., D) -> (..., K): the RMS norm, then
    the projection (an nn.Linear holding the checkpoint's (D, K) matrix transposed)."""

    def __init__(self, projector: Gemma3MultiModalProjector):
        super().__init__()
        weight = projector.mm_input_projection_weight  # (D, K)
        source = projector.mm_soft_emb_norm
        self.norm = _SoftEmbeddingNorm(weight.shape[0], eps=source.eps).to(device=weight.device)
        self.proj = nn.Linear(*weight.shape, bias=False, device=weight.device)
        with torch.no_grad():
            self.norm.weight.copy_(source.weight)
            self.proj.weight.copy_(weight.t())
        self.to(weight.dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(tokens))


class Gemma3Family:
    name = "gemma3"
    takes_image_size = False

    def __init__(self, model: str, config, revision: str | None = None, image_size: int | None = None):
        self.model = model
        self.config = config
        self.revision = revision or getattr(config, "_commit_hash", None)
        self._processor = AutoProcessor.from_pretrained(model, revision=revision)

    def frame_preprocess(self) -> FramePreprocess:
        """Square resize to the tower's size, rescale, normalise; one view per frame."""
        images = self._processor.image_processor
        if getattr(images, "do_pan_and_scan", False):
            raise UserError(f"{self.model}: its image processor has do_pan_and_scan on; redvillm encodes one "
                            "view per frame: set do_pan_and_scan to false in preprocessor_config.json")
        try:
            spec = FramePreprocess.from_hf(images)
        except ValueError as err:
            raise UserError(f"{self.model}: {err}") from None
        size = self.config.vision_config.image_size
        if spec.fixed_output_hw() != (size, size):
            raise UserError(f"{self.model}: its image processor makes {spec.fixed_output_hw()} frames, the vision "
                            f"tower takes {size} x {size}")
        return spec

    def vision_provenance(self) -> dict:
        return {
            "vision_model_type": self.config.vision_config.model_type,
            "vision_features": "last_hidden_state",
            "mm_tokens_per_image": self.config.mm_tokens_per_image,
            "cached_tokens": "average-pooled patches, before the soft-embedding norm",
            "pan_and_scan": False,
        }

    def frame_token_width(self) -> int:
        return self.config.vision_config.hidden_size  # pooling keeps the tower's width

    def load_frame_encoder(self, device: torch.device, dtype: torch.dtype) -> Gemma3FrameEncoder:
        vision_config = copy.deepcopy(self.config.vision_config)
        vision_config.vision_use_head = False  # the projector reads last_hidden_state
        tower = load_tower(AutoModel.from_config(vision_config), self.model, self.revision, _TOWER_PREFIXES,
                           Gemma3ForConditionalGeneration, "model.vision_tower", skip=("head.",))
        return Gemma3FrameEncoder(tower.to(device=device, dtype=dtype), self.config)

    # ----------------------------------------------------------------- stage two and inference

    def load_backbone(self, device: torch.device, dtype: torch.dtype) -> Gemma3ForConditionalGeneration:
        """The image LLM, frozen, without its vision tower (video tokens come from the cache)."""
        backbone = load_frozen_backbone(_Gemma3FromEmbeddings, self.model, self.revision, device, dtype,
                                        drop=("model.vision_tower",))
        return backbone

    def projector(self, backbone: Gemma3ForConditionalGeneration) -> nn.Module:
        """g_z: the multi_modal_projector after its pooling (pooled tokens D -> K)."""
        return Gemma3SoftEmbedding(backbone.model.multi_modal_projector)

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, M, D) -> temporal tokens (T, D) (mean over pooled tokens = mean over all patches),
        spatial tokens (M, D) (mean over time)."""
        return mean_pool(tokens)

    def chat_format(self) -> ChatFormat:
        processor, tokenizer = self._processor, self._processor.tokenizer
        if not processor.chat_template:
            raise UserError(f"{self.model}: no chat template in its processor files (a pretrained -pt "
                            "checkpoint?); use an instruction-tuned -it checkpoint, whose prompt redvillm reuses")
        image_token, placeholder_id = tokenizer.image_token, self.config.image_token_id
        if tokenizer.convert_tokens_to_ids(image_token) != placeholder_id:
            raise UserError(f"{self.model}: tokenizer's {image_token} is not config.image_token_id {placeholder_id}")
        end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if end_of_turn is None or end_of_turn == tokenizer.unk_token_id:
            raise UserError(f"{self.model}: its tokenizer has no {END_OF_TURN} token to end answers with")
        # The processor's expansion of one image, with one soft token standing for all video tokens.
        one_image = processor.full_image_sequence.replace(image_token * processor.image_seq_length, image_token)
        chat = ChatFormat(tokenizer, _OneImagePrompt(processor, one_image), one_image_messages(), placeholder_id)
        chat.eos_id = end_of_turn  # the -it checkpoints end a turn (and generation) there, not at <eos>
        return chat

    def backbone_inputs(self, batch) -> dict:
        """token_type_ids 1 on every video token: one bidirectional block, as one image's soft tokens."""
        return {"token_type_ids": (batch.input_ids == self.config.image_token_id).long()}


class _Gemma3FromEmbeddings(Gemma3ForConditionalGeneration):
    """Gemma3ForConditionalGeneration that generate() lets start from inputs_embeds.

    Its prepare_inputs_for_generation takes inputs_embeds only through **kwargs, so generate()
    refuses them; the generic preparation it calls uses them in the first step as for any LLM.
    """

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs):
        return super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)


class _OneImagePrompt:
    """apply_chat_template for ChatFormat: the processor's template with its image marker expanded
    as the processor expands one image, one soft token in place of mm_tokens_per_image."""

    def __init__(self, processor, one_image: str):
        self.processor, self.one_image = processor, one_image

    def __call__(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return text.replace(self.processor.boi_token, self.one_image)
