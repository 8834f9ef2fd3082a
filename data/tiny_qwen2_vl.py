"""Tiny random-weight Qwen2-VL and Qwen2.5-VL replicas, built offline and saved as real HF checkpoints.

Same architecture classes as Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct
(Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration: a 3-D conv patch embed
with temporal patch 2, a ViT with 2-D rope (2.5: window attention), the 2x2 `visual.merger`,
a Qwen2 LLM with 3-D multimodal rope), with Qwen's special tokens and chat template, at toy
widths. Written to OUT_DIR (about 1 MB):
    config.json, generation_config.json, model.safetensors (float32)
    tokenizer.json, tokenizer_config.json, chat_template.jinja (Qwen's template)
    preprocessor_config.json (Qwen2VLImageProcessor: patch 14, merge 2, CLIP mean/std)
    tiny_qwen2_vl.json (the TinyQwen2VLConfig it was built from)

No processor_config.json: transformers' Qwen2VLProcessor needs torchvision for its video half,
which redvillm does not need (frames are images to it); tokenizer, image processor and
template load on their own, as they do from the real checkpoints.

    python -m redvillm.data.tiny_qwen2_vl OUT_DIR [--variant qwen2_5_vl] [--seed 0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import transformers
from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessorPil
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from redvillm.data.tiny_common import ReplicaCLI, build_seeded, reinit_linear_and_embeddings, save_replica
from redvillm.data.tiny_tokenizer import byte_level_bpe

RECIPE_FILE = "tiny_qwen2_vl.json"
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"

# Qwen2-VL-7B-Instruct's chat template (the public one; Qwen2.5-VL uses the same).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = ["red", "green", "blue", "yellow", "white", "square", "circle", "left", "right", "up", "down",
          "first", "second", "last", "before", "after", "moves", "appeared", "colour", "video"]
_CHINESE = ["这个视频里的方块往哪个方向移动？", "哪个颜色先出现？", "红色", "蓝色", "向左", "向右", "先", "后"]


@dataclass
class TinyQwen2VLConfig:
    """Sizes and init of the tiny replica; patch 14 and merge 2 as the real models."""

    variant: Literal["qwen2_vl", "qwen2_5_vl"] = "qwen2_vl"
    vision_width: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2 (temporal, height, width)
    window_size: int = 56  # 2.5 only: 56 px = 2x2 merged units per window, so 224 px has 16 windows
    position_std: float = 0.5  # patch-embed std: pooled tokens must keep where things are (docs/tiny-models.md)
    vocab_size: int = 480
    seed: int = 0

    def __post_init__(self):
        if self.variant not in ("qwen2_vl", "qwen2_5_vl"):
            raise ValueError(f"variant must be qwen2_vl or qwen2_5_vl, got {self.variant!r}")
        head_dim = self.text_hidden // self.text_heads
        if sum(self.mrope_section) * 2 != head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim / 2 = {head_dim // 2}")


def _training_corpus() -> list[str]:
    lines = []
    for i, word in enumerate(_WORDS):
        other, chinese = _WORDS[(i * 7 + 3) % len(_WORDS)], _CHINESE[i % len(_CHINESE)]
        lines.append(f"system\nYou are a helpful assistant.\nuser\nWhich {word} {other}? {chinese}\n"
                     f"assistant\nThe {word} one {other}, {chinese}.")
    return lines


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen's special tokens; like Qwen's, it adds no bos."""
    specials = [ENDOFTEXT, IM_START, IM_END]
    vision = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
              "<|quad_end|>", VISION_START, VISION_END, "<|vision_pad|>", IMAGE_PAD, VIDEO_PAD]
    bpe = byte_level_bpe(_training_corpus(), vocab_size, special=specials, added=vision)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=IM_END, pad_token=ENDOFTEXT, add_bos_token=False, add_eos_token=False,
        clean_up_tokenization_spaces=False, model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_image_processor() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}, patch_size=14, temporal_patch_size=2,
        merge_size=2, image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD),
    )


def build_config(tokenizer: PreTrainedTokenizerFast, cfg: TinyQwen2VLConfig):
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", IMAGE_PAD), ("video_token_id", VIDEO_PAD),
        ("vision_start_token_id", VISION_START), ("vision_end_token_id", VISION_END))}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(cfg.mrope_section)},
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=1.0 / math.sqrt(cfg.text_hidden),
    )
    common_vision = dict(depth=cfg.vision_layers, num_heads=cfg.vision_heads, patch_size=14, spatial_merge_size=2,
                         temporal_patch_size=2, in_channels=3)
    if cfg.variant == "qwen2_vl":
        vision = dict(common_vision, embed_dim=cfg.vision_width, hidden_size=cfg.text_hidden, mlp_ratio=4)
        return transformers.Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    vision = dict(common_vision, hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width,
                  out_hidden_size=cfg.text_hidden, window_size=cfg.window_size,
                  fullatt_block_indexes=[cfg.vision_layers - 1], tokens_per_second=2)
    return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_model(config, cfg: TinyQwen2VLConfig) -> torch.nn.Module:
    model_class = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
                   "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[cfg.variant]
    return build_seeded(model_class, config, cfg.seed, lambda model: _reinit(model, cfg))


def _reinit(model: torch.nn.Module, cfg: TinyQwen2VLConfig) -> None:
    """1/sqrt(width) where the LLM learns through; the patch embed keeps position readable (docs/tiny-models.md)."""
    visual = model.model.visual
    reinit_linear_and_embeddings((model.model.language_model, visual.merger, model.lm_head), 1 / math.sqrt(cfg.text_hidden))
    with torch.no_grad():
        visual.patch_embed.proj.weight.normal_(0.0, cfg.position_std)


def build_tiny_qwen2_vl(out_dir: str | Path, cfg: TinyQwen2VLConfig = TinyQwen2VLConfig()) -> Path:
    """Write a loadable tiny Qwen2-VL / Qwen2.5-VL checkpoint (model, tokenizer, image processor)."""
    tokenizer = build_tokenizer(cfg.vocab_size)
    model = build_model(build_config(tokenizer, cfg), cfg)
    return save_replica(out_dir, (model, tokenizer, build_image_processor()), RECIPE_FILE, cfg)


CLI = ReplicaCLI(build_tiny_qwen2_vl, TinyQwen2VLConfig,
                 "Write a tiny random-weight Qwen2-VL or Qwen2.5-VL checkpoint.", flags=("variant",))


if __name__ == "__main__":  # the command line is redvillm.data.cli's: importing this module loads no click
    from redvillm.data.cli import replica_command

    replica_command(CLI)()
