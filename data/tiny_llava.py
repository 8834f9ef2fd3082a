"""A tiny random-weight LLaVA-1.5 replica, built offline and saved as a real HF checkpoint.

Tests and demos need a model that loads through exactly the path a real checkpoint takes
(`LlavaForConditionalGeneration.from_pretrained`, `AutoProcessor.from_pretrained`) without
a download. This module builds one from in-code configs: a CLIP vision tower, a two-layer
GELU projector and a Llama text model, a byte-level BPE tokenizer with llava-hf's special
tokens and the llava-1.5 ("USER: <image>\\n... ASSISTANT:") chat template.

Written to OUT_DIR (about 2 MB at the defaults):
    config.json, generation_config.json, model.safetensors (float32)
    tokenizer.json, tokenizer_config.json (byte-level BPE, "<image>" a single special id)
    processor_config.json (LlavaProcessor: patch size, CLS handling)
    preprocessor_config.json ("CLIPImageProcessor"; loads as the torchvision or PIL backend)
    chat_template.jinja
    tiny_llava.json (the TinyLlavaConfig it was built from)

Everything is a function of TinyLlavaConfig, including the seed: building twice gives
byte-identical files.

    python -m redvillm.data.tiny_llava OUT_DIR [--image-size 224] [--seed 0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

from redvillm.data.tiny_common import ReplicaCLI, build_seeded, reinit_linear_and_embeddings, save_replica
from redvillm.data.tiny_tokenizer import byte_level_bpe, video_corpus

# Llama's ids for the first three, then llava-hf appends "<image>" and "<pad>" after the vocab.
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
IMAGE_TOKEN, PAD = "<image>", "<pad>"
RECIPE_FILE = "tiny_llava.json"

# llava-hf/llava-1.5-*-hf's template with one change: an assistant turn ends in eos ("a</s>")
# as in the original LLaVA vicuna_v1 conversation, instead of llava-hf's "a " - so a model
# trained on rendered conversations learns to stop. {% generation %} keeps
# return_assistant_tokens_mask working. Plain-string content renders as text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + ' ' }}{% endif %}"
    "{% else %}"
    "{# images first, then text, as llava-hf renders them #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}"
    "{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}"
    "{% endfor %}"
    "{% else %}"
    "{% generation %}"
    "{{ message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }}"
    "{{ eos_token }}"
    "{% endgeneration %}"
    "{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

@dataclass
class TinyLlavaConfig:
    """Sizes and init of the tiny replica; defaults are the recipe in docs/tiny-models.md."""

    image_size: int = 224  # llava-1.5 uses 336; any size works, CLIP floors the patch grid
    patch_size: int = 32
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vision_feature_layer: int = -2  # as llava-1.5: penultimate CLIP layer
    vision_feature_select_strategy: Literal["default", "full"] = "default"  # default drops CLS, as llava-1.5
    # None -> 1/sqrt(text_hidden) for LLM and projector: HF's 0.02 leaves a random LLM so
    # flat that nothing trained through it learns (docs/tiny-models.md).
    init_std: float | None = None
    # CLIP's 0.02 position embeddings vanish under spatial pooling, so pooled tokens lose where
    # things are; 0.5 keeps position readable (docs/tiny-models.md).
    position_embedding_std: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                "vision_feature_select_strategy must be 'default' or 'full', "
                f"got {self.vision_feature_select_strategy!r}"
            )
        if self.vision_hidden % self.vision_heads or self.text_hidden % self.text_heads:
            raise ValueError("hidden sizes must be divisible by their head counts")
        if self.patch_size > self.image_size:
            raise ValueError(f"patch_size {self.patch_size} exceeds image_size {self.image_size}")

    @property
    def resolved_init_std(self) -> float:
        return self.init_std if self.init_std is not None else 1.0 / math.sqrt(self.text_hidden)

    @property
    def num_image_tokens(self) -> int:
        grid = self.image_size // self.patch_size
        return grid * grid + (0 if self.vision_feature_select_strategy == "default" else 1)


def _training_corpus() -> list[str]:
    """Deterministic chat-formatted lines about the synthetic videos (data/tiny_tokenizer.py)."""
    return video_corpus("USER: \n{question} ASSISTANT: {answer}")


def build_tokenizer(vocab_size: int = 446) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any UTF-8 text round-trips) with Llama's bos/eos/unk and llava's <image>.

    `vocab_size` counts the BPE vocabulary incl. <unk>/<s>/</s>; "<image>" and "<pad>" come on
    top, at the end, as in llava-hf (len(tokenizer) == vocab_size + 2).
    """
    bpe = byte_level_bpe(_training_corpus(), vocab_size, special=[UNK, BOS, EOS], added=[IMAGE_TOKEN, PAD])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        add_bos_token=True,  # Llama behaviour: "<s>" prepended, no eos appended
        add_eos_token=False,
        clean_up_tokenization_spaces=False,  # keep decode(encode(s)) == s
        model_max_length=4096,
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, cfg: TinyLlavaConfig) -> LlavaProcessor:
    # The PIL class is built explicitly (no torchvision needed); it saves as "CLIPImageProcessor",
    # so loading picks the torchvision backend where installed, PIL otherwise.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        resample=3,  # bicubic
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer: PreTrainedTokenizerFast, cfg: TinyLlavaConfig) -> LlavaConfig:
    special_ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
        hidden_act="quick_gelu",  # as OpenAI CLIP
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
        **special_ids,
    )
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=cfg.num_image_tokens,
        projector_hidden_act="gelu",
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        tie_word_embeddings=False,
        **special_ids,
    )


def _reinit(model: LlavaForConditionalGeneration, cfg: TinyLlavaConfig) -> None:
    """HF's init is too flat where the LLM learns through (docs/tiny-models.md); other vision params keep it."""
    parts = [model.model.language_model, model.model.multi_modal_projector, model.lm_head]
    reinit_linear_and_embeddings(parts, cfg.resolved_init_std)
    # Found by type: where CLIPVisionModel keeps its embeddings moved between transformers versions.
    embeddings = next(m for m in model.model.vision_tower.modules() if isinstance(m, CLIPVisionEmbeddings))
    with torch.no_grad():
        embeddings.position_embedding.weight.normal_(0.0, cfg.position_embedding_std)


def build_model(config: LlavaConfig, cfg: TinyLlavaConfig) -> LlavaForConditionalGeneration:
    return build_seeded(LlavaForConditionalGeneration, config, cfg.seed, lambda model: _reinit(model, cfg))


def build_tiny_llava(out_dir: str | Path, cfg: TinyLlavaConfig = TinyLlavaConfig()) -> Path:
    """Write a loadable tiny LLaVA-1.5 checkpoint (model, processor, tokenizer) to out_dir."""
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, cfg)
    model = build_model(build_config(tokenizer, cfg), cfg)
    # transformers 5 nests the image processor in processor_config.json; llava-hf checkpoints
    # (and tools reading only preprocessor_config.json) have it standalone as well.
    parts = (model, processor, processor.image_processor)
    return save_replica(out_dir, parts, RECIPE_FILE, cfg, init_std=cfg.resolved_init_std)


CLI = ReplicaCLI(build_tiny_llava, TinyLlavaConfig,
                 "Write a tiny random-weight LLaVA-1.5 checkpoint.", flags=("image_size",))


if __name__ == "__main__":  # the command line is redvillm.data.cli's: importing this module loads no click
    from redvillm.data.cli import replica_command

    replica_command(CLI)()
