"""A tiny random-weight DeepSeek-VL replica, built offline and saved as a real HF checkpoint.

The DeepSeek-VL counterpart of tiny_llava: it loads through exactly the path a real checkpoint
(deepseek-community/deepseek-vl-1.3b-chat) takes - AutoConfig, AutoProcessor and
DeepseekVLForConditionalGeneration.from_pretrained - without a download. Built from in-code
configs: a SigLIP vision model (with its attention-pooling head, as the real one has), the
two-layer GELU `aligner` and a Llama text model; a byte-level BPE tokenizer with DeepSeek's
special tokens (bos "<｜begin▁of▁sentence｜>", eos "<｜end▁of▁sentence｜>", which is also the pad
token as in deepseek-community's tokenizer, and "<image_placeholder>"); DeepSeek's chat format
("...assistant.\\n\\nUser: <image_placeholder>question\\n\\nAssistant:"); DeepSeek's image
processor (longest side resized, padded to square with the mean colour).

Written to OUT_DIR (about 1 MB at the defaults):
    config.json, generation_config.json, model.safetensors (float32)
    tokenizer.json, tokenizer_config.json
    processor_config.json (DeepseekVLProcessor: num_image_tokens = N)
    preprocessor_config.json ("DeepseekVLImageProcessor"; loads as the torchvision or PIL backend)
    chat_template.jinja
    tiny_deepseek_vl.json (the TinyDeepseekVLConfig it was built from)

Everything is a function of TinyDeepseekVLConfig, including the seed: building twice gives
byte-identical files.

    python -m redvillm.data.tiny_deepseek_vl OUT_DIR [--image-size 64] [--seed 0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    DeepseekVLConfig,
    DeepseekVLForConditionalGeneration,
    DeepseekVLImageProcessorPil,
    DeepseekVLProcessor,
    LlamaConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)
from transformers.models.siglip.modeling_siglip import SiglipVisionEmbeddings

from redvillm.data.tiny_common import ReplicaCLI, build_seeded, reinit_linear_and_embeddings, save_replica
from redvillm.data.tiny_tokenizer import byte_level_bpe, video_corpus

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
IMAGE_TOKEN = "<image_placeholder>"
RECIPE_FILE = "tiny_deepseek_vl.json"

# SigLIP's normalisation, as DeepSeek-VL-1.3B's SigLIP-L tower uses; the processor pads with
# int(mean * 255) = 127 grey.
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

# DeepSeek-VL's "deepseek" conversation format, as deepseek-community's processor renders it:
# the system prompt, then "User: " turns closed by a blank line and "Assistant: " turns closed
# by eos; an image part is "<image_placeholder>" (the processor repeats it N times), text parts
# are trimmed at the message's ends and joined with a space. Plain-string content renders as text.
CHAT_TEMPLATE = (
    "{{ '" + SYSTEM_PROMPT + "' + '\\n\\n' }}"
    "{% for message in messages %}"
    "{% set role = message['role'] | lower %}"
    "{% set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string "
    "else message['content'] %}"
    "{% if role == 'user' %}{{ 'User: ' }}"
    "{% elif role == 'assistant' %}{{ 'Assistant:' }}"
    "{% if not (loop.last and not add_generation_prompt and parts[0]['type'] == 'text' and parts[0]['text'] == '') %}"
    "{{ ' ' }}{% endif %}"
    "{% else %}{{ message['role'] | capitalize }}{{ ': ' }}{% endif %}"
    "{% for part in parts %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "' }}"
    "{% elif part['type'] == 'text' %}"
    "{% set text = part['text'] %}"
    "{% if loop.first %}{% set text = text.lstrip() %}{% endif %}"
    "{% if loop.last %}{% set text = text.rstrip() %}{% endif %}"
    "{% if not loop.first and parts[loop.index0 - 1]['type'] == 'text' %}{{ ' ' }}{% endif %}"
    "{{ text }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if not loop.last or add_generation_prompt %}"
    "{{ '\\n\\n' if role == 'user' else eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

@dataclass
class TinyDeepseekVLConfig:
    """Sizes and init of the tiny replica (the recipe of tiny_llava, docs/tiny-models.md)."""

    image_size: int = 64  # deepseek-vl-1.3b: 384 (SigLIP-L/16, 576 tokens)
    patch_size: int = 16
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 448  # BPE vocabulary incl. bos/eos; "<image_placeholder>" comes on top
    # None -> 1/sqrt(text_hidden) for LLM, aligner and LM head: HF's 0.02 leaves a random LLM so
    # flat that nothing trained through it learns (docs/tiny-models.md).
    init_std: float | None = None
    # SigLIP's default position embeddings vanish under spatial pooling, so pooled tokens lose
    # where things are; 0.5 keeps position readable (docs/tiny-models.md).
    position_embedding_std: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.vision_hidden % self.vision_heads or self.text_hidden % self.text_heads:
            raise ValueError("hidden sizes must be divisible by their head counts")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def resolved_init_std(self) -> float:
        return self.init_std if self.init_std is not None else 1.0 / math.sqrt(self.text_hidden)

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2  # SigLIP has no CLS token


def _training_corpus() -> list[str]:
    """Deterministic chat-formatted lines about the synthetic videos (data/tiny_tokenizer.py)."""
    return video_corpus("User: {question}\n\nAssistant: {answer}")


def build_tokenizer(cfg: TinyDeepseekVLConfig) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any UTF-8 text round-trips) with DeepSeek's bos/eos and "<image_placeholder>"."""
    corpus = [SYSTEM_PROMPT] + _training_corpus()
    bpe = byte_level_bpe(corpus, cfg.vocab_size, special=[BOS, EOS], added=[IMAGE_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,  # as deepseek-community's tokenizer: no pad token of its own
        extra_special_tokens={"image_token": IMAGE_TOKEN},  # DeepseekVLProcessor reads tokenizer.image_token
        add_bos_token=True,  # Llama behaviour: bos prepended, no eos appended
        add_eos_token=False,
        clean_up_tokenization_spaces=False,  # keep decode(encode(s)) == s
        model_max_length=4096,
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, cfg: TinyDeepseekVLConfig) -> DeepseekVLProcessor:
    # The PIL class is built explicitly (no torchvision needed); it saves as
    # "DeepseekVLImageProcessor", so loading picks the torchvision backend where installed.
    image_processor = DeepseekVLImageProcessorPil(
        size={"height": cfg.image_size, "width": cfg.image_size},
        min_size=14,
        resample=3,  # bicubic
        do_resize=True,
        do_pad=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(SIGLIP_MEAN),
        image_std=list(SIGLIP_STD),
        do_convert_rgb=True,
    )
    return DeepseekVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        num_image_tokens=cfg.num_image_tokens,
    )


def build_config(tokenizer: PreTrainedTokenizerFast, cfg: TinyDeepseekVLConfig) -> DeepseekVLConfig:
    vision_config = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=4096,
        initializer_range=cfg.resolved_init_std,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return DeepseekVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tie_word_embeddings=False,
    )


def _reinit(model: DeepseekVLForConditionalGeneration, cfg: TinyDeepseekVLConfig) -> None:
    """HF's init is too flat where the LLM learns through (docs/tiny-models.md); other vision params keep it."""
    reinit_linear_and_embeddings((model.model.language_model, model.model.aligner, model.lm_head), cfg.resolved_init_std)
    embeddings = next(m for m in model.model.vision_model.modules() if isinstance(m, SiglipVisionEmbeddings))
    with torch.no_grad():
        embeddings.position_embedding.weight.normal_(0.0, cfg.position_embedding_std)


def build_model(config: DeepseekVLConfig, cfg: TinyDeepseekVLConfig) -> DeepseekVLForConditionalGeneration:
    return build_seeded(DeepseekVLForConditionalGeneration, config, cfg.seed, lambda model: _reinit(model, cfg))


def build_tiny_deepseek_vl(out_dir: str | Path, cfg: TinyDeepseekVLConfig | None = None) -> Path:
    """Write a loadable tiny DeepSeek-VL checkpoint (model, processor, tokenizer) to out_dir."""
    cfg = cfg or TinyDeepseekVLConfig()
    tokenizer = build_tokenizer(cfg)
    processor = build_processor(tokenizer, cfg)
    model = build_model(build_config(tokenizer, cfg), cfg)
    # Standalone preprocessor_config.json as well, as tiny_llava writes it.
    parts = (model, processor, processor.image_processor)
    return save_replica(out_dir, parts, RECIPE_FILE, cfg, init_std=cfg.resolved_init_std)


CLI = ReplicaCLI(build_tiny_deepseek_vl, TinyDeepseekVLConfig,
                 "Write a tiny random-weight DeepSeek-VL checkpoint.", flags=("image_size",))


if __name__ == "__main__":  # the command line is redvillm.data.cli's: importing this module loads no click
    from redvillm.data.cli import replica_command

    replica_command(CLI)()
