"""A tiny random-weight DeepSeek-VL 7B replica (``deepseek_vl_hybrid``), built offline, saved as a real checkpoint.

The architecture of deepseek-community/deepseek-vl-7b-chat at toy sizes, loading through the
path a real checkpoint takes (AutoConfig, AutoProcessor,
DeepseekVLHybridForConditionalGeneration.from_pretrained) without a download:
- a SigLIP low-resolution tower without its pooling head (the real config sets vision_use_head
  False), 96 px, patch 16 -> 6 x 6 = 36 tokens, 64 wide;
- a SAM high-resolution tower, 256 px, patch 16, with windowed layers and one global-attention
  layer whose hidden state goes through the second neck, mixed in with a non-zero
  high_res_vision_alpha (transformers initialises it to 0, which would hide that path);
  high_res_vision_proj brings SAM's 16 x 16 grid onto the same 6 x 6 grid, 4 x 16 = 64 wide
  (both sizes keep the 7B's 1024 : 384 ratio, so the low image is resized by the same factor);
- the hybrid aligner (64 -> 32 per tower, GELU, 64 -> 64) and a Llama text model;
- DeepSeek's tokenizer specials and chat format, shared with tiny_deepseek_vl;
- the hybrid image processor as the 7B's is configured: longest side resized to the high size
  (bicubic) and padded with the CLIP mean colour; the low-resolution image resized from that
  padded image (bilinear) and normalised with mean = std = 0.5; the high one with CLIP's numbers.

Written to OUT_DIR (about 2 MB): config.json, generation_config.json, model.safetensors,
tokenizer files, processor_config.json, preprocessor_config.json ("DeepseekVLHybridImageProcessor";
loads as the PIL backend without torchvision), chat_template.jinja, and tiny_deepseek_vl_hybrid.json
(the TinyDeepseekVLHybridConfig it was built from). Building twice gives byte-identical files.

    python -m redvillm.data.tiny_deepseek_vl_hybrid OUT_DIR [--seed 0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    DeepseekVLHybridConfig,
    DeepseekVLHybridForConditionalGeneration,
    DeepseekVLHybridImageProcessorPil,
    DeepseekVLHybridProcessor,
    LlamaConfig,
    PreTrainedTokenizerFast,
    SamVisionConfig,
    SiglipVisionConfig,
)
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from redvillm.data.tiny_common import ReplicaCLI, build_seeded, reinit_linear_and_embeddings, save_replica
from redvillm.data.tiny_deepseek_vl import CHAT_TEMPLATE, IMAGE_TOKEN, build_tokenizer

RECIPE_FILE = "tiny_deepseek_vl_hybrid.json"


@dataclass
class TinyDeepseekVLHybridConfig:
    """Sizes and init of the tiny replica; deepseek-vl-7b's values in the comments."""

    image_size: int = 96  # SigLIP-L: 384 (the 8:3 ratio of the two sizes is the 7B's)
    patch_size: int = 16  # 16
    vision_hidden: int = 64  # 1024
    vision_layers: int = 2  # 24
    vision_heads: int = 4  # 16
    high_res_image_size: int = 256  # SAM-B: 1024
    high_res_patch_size: int = 16  # 16
    high_res_hidden: int = 32  # 768
    high_res_layers: int = 2  # 12
    high_res_heads: int = 2  # 12
    high_res_window: int = 4  # 14
    high_res_global_layers: tuple[int, ...] = (1,)  # (2, 5, 8, 11); the first feeds the second neck
    high_res_output_channels: int = 16  # 256; the aligner takes 4x this from SAM
    high_res_alpha: float = 0.5  # the trained model's own value is learned
    text_hidden: int = 64  # 4096
    text_layers: int = 2  # 30
    text_heads: int = 4  # 32
    vocab_size: int = 448  # BPE vocabulary incl. bos/eos; "<image_placeholder>" comes on top
    init_std: float | None = None  # None -> 1/sqrt(text_hidden) for LLM, aligner, LM head (as tiny_deepseek_vl)
    position_embedding_std: float = 0.5  # keeps position readable after spatial pooling (as tiny_deepseek_vl)
    seed: int = 0

    def __post_init__(self):
        self.high_res_global_layers = tuple(self.high_res_global_layers)
        if self.vision_hidden % self.vision_heads or self.text_hidden % self.text_heads:
            raise ValueError("hidden sizes must be divisible by their head counts")
        if self.high_res_hidden % self.high_res_heads or self.text_hidden % 2:
            raise ValueError("SAM's width must divide by its heads, the LLM width by 2 (the aligner halves it)")
        if self.image_size % self.patch_size or self.high_res_image_size % self.high_res_patch_size:
            raise ValueError("image sizes must be multiples of their patch sizes")

    @property
    def resolved_init_std(self) -> float:
        return self.init_std if self.init_std is not None else 1.0 / math.sqrt(self.text_hidden)

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2  # the aligner's grid is SigLIP's


def build_processor(tokenizer: PreTrainedTokenizerFast, cfg: TinyDeepseekVLHybridConfig) -> DeepseekVLHybridProcessor:
    # Saved as "DeepseekVLHybridImageProcessor": the torchvision backend where installed, else PIL.
    image_processor = DeepseekVLHybridImageProcessorPil(
        size={"height": cfg.image_size, "width": cfg.image_size},
        high_res_size={"height": cfg.high_res_image_size, "width": cfg.high_res_image_size},
        min_size=14,
        resample=2,  # bilinear, as the 7B's processor resizes the high-res image down
        high_res_resample=3,  # bicubic
        do_resize=True,
        do_pad=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_STANDARD_MEAN),
        image_std=list(IMAGENET_STANDARD_STD),
        high_res_image_mean=list(OPENAI_CLIP_MEAN),
        high_res_image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )
    return DeepseekVLHybridProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                                     num_image_tokens=cfg.num_image_tokens)


def build_config(tokenizer: PreTrainedTokenizerFast, cfg: TinyDeepseekVLHybridConfig) -> DeepseekVLHybridConfig:
    vision_config = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        hidden_act="gelu", vision_use_head=False,
    )
    high_res_config = SamVisionConfig(
        hidden_size=cfg.high_res_hidden, mlp_dim=4 * cfg.high_res_hidden, num_hidden_layers=cfg.high_res_layers,
        num_attention_heads=cfg.high_res_heads, image_size=cfg.high_res_image_size,
        patch_size=cfg.high_res_patch_size, window_size=cfg.high_res_window,
        global_attn_indexes=list(cfg.high_res_global_layers), output_channels=cfg.high_res_output_channels,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads,
        max_position_embeddings=4096, initializer_range=cfg.resolved_init_std, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return DeepseekVLHybridConfig(
        vision_config=vision_config, high_res_vision_config=high_res_config, text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tie_word_embeddings=False,
    )


@torch.no_grad()
def _reinit(model: DeepseekVLHybridForConditionalGeneration, cfg: TinyDeepseekVLHybridConfig) -> None:
    """HF's init is too flat for anything to learn through (see tiny_deepseek_vl); other towers' params keep it."""
    reinit_linear_and_embeddings((model.model.language_model, model.model.aligner, model.lm_head), cfg.resolved_init_std)
    model.model.vision_model.embeddings.position_embedding.weight.normal_(0.0, cfg.position_embedding_std)
    model.model.high_res_vision_model.vision_encoder.pos_embed.normal_(0.0, cfg.position_embedding_std)
    model.model.high_res_vision_alpha.fill_(cfg.high_res_alpha)


def build_model(config: DeepseekVLHybridConfig, cfg: TinyDeepseekVLHybridConfig) -> DeepseekVLHybridForConditionalGeneration:
    return build_seeded(DeepseekVLHybridForConditionalGeneration, config, cfg.seed, lambda model: _reinit(model, cfg))


def build_tiny_deepseek_vl_hybrid(out_dir: str | Path, cfg: TinyDeepseekVLHybridConfig | None = None) -> Path:
    """Write a loadable tiny DeepSeek-VL 7B-architecture checkpoint (model, processor, tokenizer) to out_dir."""
    cfg = cfg or TinyDeepseekVLHybridConfig()
    tokenizer = build_tokenizer(cfg)  # reads cfg.vocab_size only
    processor = build_processor(tokenizer, cfg)
    model = build_model(build_config(tokenizer, cfg), cfg)
    parts = (model, processor, processor.image_processor)  # the standalone preprocessor_config.json too
    return save_replica(out_dir, parts, RECIPE_FILE, cfg, init_std=cfg.resolved_init_std)


CLI = ReplicaCLI(build_tiny_deepseek_vl_hybrid, TinyDeepseekVLHybridConfig,
                 "Write a tiny random-weight DeepSeek-VL 7B-architecture checkpoint.")


if __name__ == "__main__":  # the command line is redvillm.data.cli's: importing this module loads no click
    from redvillm.data.cli import replica_command

    replica_command(CLI)()
