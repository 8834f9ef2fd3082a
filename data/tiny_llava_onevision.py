"""A tiny random-weight LLaVA-OneVision replica, built offline and saved as a real HF checkpoint.

Same classes as llava-hf/llava-onevision-qwen2-7b-ov-hf and -0.5b-ov-hf
(LlavaOnevisionForConditionalGeneration): a SigLIP vision model without its pooling head, whose
last layer's hidden states (no CLS to drop: "full") go through the two-layer GELU projector; the
learned `image_newline` vector; a Qwen2 LLM; the any-resolution settings (image_grid_pinpoints
in multiples of the tile, "anyres_max_9"); Qwen's special tokens plus "<image>" and "<video>";
the chat template transformers' conversion script writes for these checkpoints. At toy widths,
with a 72 px tile and patch 14, so that the patch grid floors as the real 384 px / 14 does
(5 x 5 = 25 tokens here, 27 x 27 = 729 there).

Written to OUT_DIR (about 1 MB):
    config.json, generation_config.json, model.safetensors (float32)
    tokenizer.json, tokenizer_config.json, chat_template.jinja
    processor_config.json (LlavaOnevisionProcessor: num_image_tokens, "full")
    preprocessor_config.json ("LlavaOnevisionImageProcessor"; loads as the torchvision or PIL backend)
    tiny_llava_onevision.json (the TinyLlavaOnevisionConfig it was built from)

No video processor is written: transformers' needs torchvision, and redvillm does its own frame
preprocessing. Building twice gives byte-identical files.

    python -m redvillm.data.tiny_llava_onevision OUT_DIR [--seed 0]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.siglip.modeling_siglip import SiglipVisionEmbeddings

from redvillm.data.tiny_common import ReplicaCLI, build_seeded, reinit_linear_and_embeddings, save_replica
from redvillm.data.tiny_tokenizer import byte_level_bpe, video_corpus

RECIPE_FILE = "tiny_llava_onevision.json"
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # the so400m SigLIP's normalisation, as the real processors have

# The template of the llava-hf OneVision checkpoints (no default system turn): per message its
# role line, then every image as "<image>\n", every video as "<video>\n", then the text, then
# "<|im_end|>\n"; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'video' %}{{ '<video>\\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ part['text'] }}{% endgeneration %}"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class TinyLlavaOnevisionConfig:
    """Sizes and init of the tiny replica; the real 7B has a 384 px tile, 1152-wide SigLIP, 3584-wide Qwen2."""

    tile_size: int = 72  # the base tile; 72 // 14 = 5 patches a side, floored like 384 // 14 = 27
    patch_size: int = 14
    max_tiles_per_side: int = 3  # pinpoints: every (i, j) multiple of the tile up to this (the real: 6)
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    vocab_size: int = 460
    # None -> 1/sqrt(text_hidden) for LLM and projector: HF's 0.02 leaves a random LLM too flat to learn through.
    init_std: float | None = None
    position_embedding_std: float = 0.5  # pooled tokens must keep where things are (see tiny_llava)
    seed: int = 0

    def __post_init__(self):
        if self.vision_hidden % self.vision_heads or self.text_hidden % self.text_heads:
            raise ValueError("hidden sizes must be divisible by their head counts")
        if self.patch_size > self.tile_size:
            raise ValueError(f"patch_size {self.patch_size} exceeds tile_size {self.tile_size}")

    @property
    def resolved_init_std(self) -> float:
        return self.init_std if self.init_std is not None else 1.0 / math.sqrt(self.text_hidden)

    @property
    def num_image_tokens(self) -> int:
        """Tokens of one base tile (SigLIP has no CLS): 25 here, 729 for the real checkpoints."""
        return (self.tile_size // self.patch_size) ** 2

    @property
    def grid_pinpoints(self) -> list[list[int]]:
        sides = [self.tile_size * i for i in range(1, self.max_tiles_per_side + 1)]
        return [[height, width] for height in sides for width in sides]


def build_tokenizer(cfg: TinyLlavaOnevisionConfig) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen2's special tokens (no bos, eos "<|im_end|>"), "<image>" and "<video>" on top."""
    corpus = video_corpus("user\n{question}\nassistant\n{answer}\n")  # the template's layout, specials left out
    bpe = byte_level_bpe(corpus, cfg.vocab_size, special=[ENDOFTEXT, IM_START, IM_END],
                         added=[IMAGE_TOKEN, VIDEO_TOKEN])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=IM_END, pad_token=ENDOFTEXT, add_bos_token=False, add_eos_token=False,
        clean_up_tokenization_spaces=False, model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_image_processor(cfg: TinyLlavaOnevisionConfig) -> LlavaOnevisionImageProcessorPil:
    # The PIL class (no torchvision); it saves as "LlavaOnevisionImageProcessor", as the hub's does.
    return LlavaOnevisionImageProcessorPil(
        size={"height": cfg.tile_size, "width": cfg.tile_size}, image_grid_pinpoints=cfg.grid_pinpoints,
        resample=3, do_pad=True, image_mean=list(SIGLIP_MEAN), image_std=list(SIGLIP_STD),
    )


def processor_settings(cfg: TinyLlavaOnevisionConfig) -> dict:
    """processor_config.json as LlavaOnevisionProcessor saves it. Written by hand: the processor
    object cannot be built here, its video half needs torchvision."""
    return {"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": cfg.num_image_tokens,
            "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9",
            "image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN}


def build_config(tokenizer: PreTrainedTokenizerFast, cfg: TinyLlavaOnevisionConfig) -> LlavaOnevisionConfig:
    vision = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=cfg.tile_size, patch_size=cfg.patch_size,
        vision_use_head=False,  # as the real ones: the pooling head is dropped
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=4096, initializer_range=cfg.resolved_init_std, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaOnevisionConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        vision_feature_layer=-1, vision_feature_select_strategy="full", image_grid_pinpoints=cfg.grid_pinpoints,
        vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False,
    )


def _reinit(model: LlavaOnevisionForConditionalGeneration, cfg: TinyLlavaOnevisionConfig) -> None:
    """1/sqrt(width) for LLM, projector and head; SigLIP's position embeddings spread out; the rest as HF inits it."""
    parts = (model.model.language_model, model.model.multi_modal_projector, model.lm_head)
    reinit_linear_and_embeddings(parts, cfg.resolved_init_std)
    embeddings = next(m for m in model.model.vision_tower.modules() if isinstance(m, SiglipVisionEmbeddings))
    with torch.no_grad():
        embeddings.position_embedding.weight.normal_(0.0, cfg.position_embedding_std)


def build_tiny_llava_onevision(out_dir: str | Path, cfg: TinyLlavaOnevisionConfig | None = None) -> Path:
    """Write a loadable tiny LLaVA-OneVision checkpoint (model, tokenizer, image processor) to out_dir."""
    cfg = cfg or TinyLlavaOnevisionConfig()
    tokenizer = build_tokenizer(cfg)  # saves chat_template.jinja too
    model = build_seeded(LlavaOnevisionForConditionalGeneration, build_config(tokenizer, cfg), cfg.seed,
                         lambda m: _reinit(m, cfg))
    out_dir = save_replica(out_dir, (model, tokenizer, build_image_processor(cfg)), RECIPE_FILE, cfg,
                           init_std=cfg.resolved_init_std)
    settings = json.dumps(processor_settings(cfg), indent=2, sort_keys=True)
    (out_dir / "processor_config.json").write_text(settings + "\n")
    return out_dir


CLI = ReplicaCLI(build_tiny_llava_onevision, TinyLlavaOnevisionConfig,
                 "Write a tiny random-weight LLaVA-OneVision checkpoint.")


if __name__ == "__main__":  # the command line is redvillm.data.cli's: importing this module loads no click
    from redvillm.data.cli import replica_command

    replica_command(CLI)()
