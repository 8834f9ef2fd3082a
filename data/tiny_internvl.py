"""A tiny random-weight InternVL3 replica, built offline and saved as a real HF checkpoint.

Same architecture class as OpenGVLab/InternVL3-{1B,2B,8B}-hf (InternVLForConditionalGeneration:
an InternViT vision tower with a CLS token and layer scale, the 0.5 pixel shuffle, the
`multi_modal_projector` MLP (LayerNorm(4D) -> Linear -> GELU -> Linear) and a Qwen2 LLM with
1-D positions), with InternVL's special tokens (<|im_start|>, <|im_end|>, <img>, </img>,
<IMG_CONTEXT>, ...) and the -hf checkpoints' chat template, at toy widths. Written to OUT_DIR
(about 1 MB at the defaults):
    config.json, generation_config.json, model.safetensors (float32)
    tokenizer.json, tokenizer_config.json (byte-level BPE; <img>/</img>/<IMG_CONTEXT> named as
        the tokenizer attributes InternVLProcessor reads), chat_template.jinja
    preprocessor_config.json ("GotOcr2ImageProcessor": one square tile, ImageNet mean/std)
    processor_config.json (InternVLProcessor: image_seq_length, as in the -hf checkpoints)
    tiny_internvl.json (the TinyInternVLConfig it was built from)

transformers' InternVLProcessor cannot be built without torchvision (its video half needs it),
and redvillm does not need it: frames are images to us. So processor_config.json is written as
the real checkpoints have it, and the tokenizer, image processor and template load on their own
through from_pretrained (AutoTokenizer, AutoImageProcessor), as they do from the real ones.

Everything is a function of TinyInternVLConfig, including the seed: building twice gives
byte-identical files.

    python -m redvillm.data.tiny_internvl OUT_DIR [--seed 0]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.models.internvl.modeling_internvl import InternVLVisionEmbeddings

from redvillm.data.tiny_common import ReplicaCLI, build_seeded, reinit_linear_and_embeddings, save_replica
from redvillm.data.tiny_tokenizer import byte_level_bpe, video_corpus

RECIPE_FILE = "tiny_internvl.json"
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
IMG_START, IMG_END, IMG_CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
# InternVL's tokens after Qwen2.5's, in its order (ids 151665.. in the real vocabulary).
INTERNVL_TOKENS = [IMG_START, IMG_END, IMG_CONTEXT, "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
# The names InternVLProcessor reads off the tokenizer (tokenizer.start_image_token, ...).
NAMED_TOKENS = {"start_image_token": IMG_START, "end_image_token": IMG_END,
                "context_image_token": IMG_CONTEXT, "video_token": VIDEO}

# The chat template of the OpenGVLab/InternVL3-*-hf checkpoints (transformers' conversion script):
# an image is "<IMG_CONTEXT>\n" before the text, which the processor expands to
# "<img>" + image_seq_length x "<IMG_CONTEXT>" + "</img>"; no default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}"
    "{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\\n' }}"
    "{% endif %}"
)

@dataclass
class TinyInternVLConfig:
    """Sizes and init of the tiny replica (InternVL3 uses 448 px, patch 14, widths 1024 / 896+)."""

    image_size: int = 64
    patch_size: int = 8  # an 8 x 8 patch grid: even, as the 2 x 2 pixel shuffle needs
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2  # grouped-query attention, as Qwen2.5
    vocab_size: int = 446  # BPE vocabulary incl. the three Qwen specials; InternVL's tokens come on top
    vision_feature_layer: int = -1  # as InternVL3: the last layer
    downsample_ratio: float = 0.5
    # None -> 1/sqrt(text_hidden) for LLM and projector: HF's 0.02 leaves a random LLM so
    # flat that nothing trained through it learns (docs/tiny-models.md).
    init_std: float | None = None
    # InternViT's position embeddings start at zero (HF init): pooled tokens would not know
    # where things are; 0.5 keeps position readable (docs/tiny-models.md).
    position_embedding_std: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.vision_hidden % self.vision_heads or self.text_hidden % self.text_heads:
            raise ValueError("hidden sizes must be divisible by their head counts")
        if self.text_heads % self.text_kv_heads:
            raise ValueError("text_heads must be a multiple of text_kv_heads")
        grid, per_side = self.image_size // self.patch_size, round(1 / self.downsample_ratio)
        if self.image_size % self.patch_size or grid % per_side:
            raise ValueError(f"the {grid} x {grid} patch grid must split into {per_side} x {per_side} groups")

    @property
    def resolved_init_std(self) -> float:
        return self.init_std if self.init_std is not None else 1.0 / math.sqrt(self.text_hidden)

    @property
    def image_seq_length(self) -> int:
        """LLM tokens per image tile: the patch grid after the pixel shuffle."""
        side = int(self.image_size // self.patch_size * self.downsample_ratio)
        return side * side


def _training_corpus() -> list[str]:
    """Deterministic chat-formatted lines about the synthetic videos (data/tiny_tokenizer.py)."""
    return video_corpus("user\n\n{question}\nassistant\n{answer}\n")


def build_tokenizer(vocab_size: int = 446) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen2's <|endoftext|>/<|im_start|>/<|im_end|> and InternVL's image tokens.

    As in the -hf checkpoints: no bos, eos "<|im_end|>", pad "<|endoftext|>", and the image
    tokens named (start_image_token, ...) so that InternVLProcessor finds them.
    """
    bpe = byte_level_bpe(_training_corpus(), vocab_size, special=[ENDOFTEXT, IM_START, IM_END],
                         added=INTERNVL_TOKENS + [VIDEO])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=dict(NAMED_TOKENS),
        clean_up_tokenization_spaces=False,  # keep decode(encode(s)) == s
        model_max_length=8192,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_image_processor(cfg: TinyInternVLConfig) -> GotOcr2ImageProcessorPil:
    # The PIL class is built explicitly (no torchvision needed); it saves as "GotOcr2ImageProcessor",
    # so loading picks the torchvision backend where installed, PIL otherwise.
    return GotOcr2ImageProcessorPil(
        size={"height": cfg.image_size, "width": cfg.image_size},
        resample=3,  # bicubic
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_convert_rgb=True,
        crop_to_patches=False,  # the processor call turns tiling on for images; frames are one tile
        min_patches=1,
        max_patches=12,
    )


def build_config(tokenizer: PreTrainedTokenizerFast, cfg: TinyInternVLConfig) -> InternVLConfig:
    special_ids = {
        "bos_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT),  # Qwen2's config names it bos
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = InternVLVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act="gelu",
        norm_type="layer_norm",  # InternViT-300M (InternVL3-1B/2B/8B); the 6B tower uses rms_norm
        attention_bias=True,  # InternViT-300M's qkv_bias
        use_mean_pooling=True,  # no final layernorm on last_hidden_state
    )
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=4096,
        initializer_range=cfg.resolved_init_std,
        tie_word_embeddings=False,
        **special_ids,
    )
    return InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMG_CONTEXT),
        image_seq_length=cfg.image_seq_length,
        downsample_ratio=cfg.downsample_ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy="default",  # drop CLS, as every InternVL checkpoint
        tie_word_embeddings=False,
    )


def _reinit(model: InternVLForConditionalGeneration, cfg: TinyInternVLConfig) -> None:
    """HF's init is too flat where the LLM learns through (docs/tiny-models.md); other vision params keep it."""
    parts = (model.model.language_model, model.model.multi_modal_projector, model.lm_head)
    reinit_linear_and_embeddings(parts, cfg.resolved_init_std)
    embeddings = next(m for m in model.model.vision_tower.modules() if isinstance(m, InternVLVisionEmbeddings))
    with torch.no_grad():
        embeddings.position_embeddings.normal_(0.0, cfg.position_embedding_std)


def build_model(config: InternVLConfig, cfg: TinyInternVLConfig) -> InternVLForConditionalGeneration:
    return build_seeded(InternVLForConditionalGeneration, config, cfg.seed, lambda model: _reinit(model, cfg))


def build_tiny_internvl(out_dir: str | Path, cfg: TinyInternVLConfig | None = None) -> Path:
    """Write a loadable tiny InternVL3 checkpoint (model, tokenizer, image processor, template)."""
    cfg = cfg or TinyInternVLConfig()
    tokenizer = build_tokenizer(cfg.vocab_size)
    model = build_model(build_config(tokenizer, cfg), cfg)
    parts = (model, tokenizer, build_image_processor(cfg))
    out_dir = save_replica(out_dir, parts, RECIPE_FILE, cfg, init_std=cfg.resolved_init_std)
    processor = {"image_seq_length": cfg.image_seq_length, "processor_class": "InternVLProcessor"}
    (out_dir / "processor_config.json").write_text(json.dumps(processor, indent=2, sort_keys=True) + "\n")
    return out_dir


CLI = ReplicaCLI(build_tiny_internvl, TinyInternVLConfig, "Write a tiny random-weight InternVL3 checkpoint.")


if __name__ == "__main__":  # the command line is redvillm.data.cli's: importing this module loads no click
    from redvillm.data.cli import replica_command

    replica_command(CLI)()
