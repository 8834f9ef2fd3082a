"""A tiny random-weight Gemma 3 replica, built offline and saved as a real HF checkpoint.

Same architecture class as google/gemma-3-{4b,12b,27b}-it (Gemma3ForConditionalGeneration: a
SigLIP tower without its pooling head, the Gemma3MultiModalProjector - average pooling of the
patch grid to mm_tokens_per_image tokens, a Gemma RMS norm, one bias-free projection - and a
Gemma 3 LLM with sliding and global attention layers and a scaled embedding), with Gemma's
special tokens (<bos>, <eos>, <start_of_turn>, <end_of_turn>, <start_of_image>, <end_of_image>,
<image_soft_token>) and the -it checkpoints' chat template, at toy widths. The 4B's 64 x 64
patch grid pools 4 x 4 patches per token; the replica's 8 x 8 grid pools 2 x 2.
Written to OUT_DIR (about 1 MB at the defaults):
    config.json, model.safetensors, generation_config.json (as the -it checkpoints': stops at
        <eos> or <end_of_turn>, samples with top-k 64 / top-p 0.95 unless told otherwise)
    tokenizer.json, tokenizer_config.json (byte-level BPE; boi/eoi/image tokens named as the
        tokenizer attributes Gemma3Processor reads), chat_template.jinja
    preprocessor_config.json ("Gemma3ImageProcessor": square resize, bilinear, mean/std 0.5)
    processor_config.json (Gemma3Processor: image_seq_length, as in the real checkpoints)
    tiny_gemma3.json (the TinyGemma3Config it was built from)

Everything is a function of TinyGemma3Config, including the seed: building twice gives
byte-identical files.

    python -m redvillm.data.tiny_gemma3 OUT_DIR [--seed 0]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)
from transformers.models.siglip.modeling_siglip import SiglipVisionEmbeddings

from redvillm.data.tiny_common import ReplicaCLI, build_seeded, reinit_linear_and_embeddings, save_replica
from redvillm.data.tiny_tokenizer import byte_level_bpe, video_corpus

RECIPE_FILE = "tiny_gemma3.json"
PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"  # ids 0..3, as in Gemma's vocabulary
START_TURN, END_TURN = "<start_of_turn>", "<end_of_turn>"
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
# The names Gemma3Processor reads off the tokenizer (tokenizer.boi_token, tokenizer.image_token_id, ...).
NAMED_TOKENS = {"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE}

# What the -it checkpoints' template renders: bos, a system message folded into the first user
# turn, "<start_of_turn>user\n" ... "<end_of_turn>\n" per message (assistant -> "model"), text
# trimmed, an image as "<start_of_image>" (the processor expands it to
# "\n\n<start_of_image>" + 256 x "<image_soft_token>" + "<end_of_image>\n\n").
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] %}"
    "{% set prefix = system + '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% if loop.first %}{{ prefix }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


@dataclass
class TinyGemma3Config:
    """Sizes and init of the tiny replica (Gemma 3 4B: 896 px, patch 14, widths 1152 / 2560)."""

    image_size: int = 64
    patch_size: int = 8  # an 8 x 8 patch grid ...
    mm_tokens_per_image: int = 16  # ... average-pooled to 4 x 4 tokens
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2  # one sliding-window layer, one global layer
    text_heads: int = 4
    text_kv_heads: int = 2  # grouped-query attention, as Gemma 3
    head_dim: int = 16
    sliding_window: int = 24  # shorter than a prompt, so the sliding mask matters
    vocab_size: int = 446  # BPE vocabulary incl. <pad>/<eos>/<bos>/<unk>; Gemma's tokens come on top
    # None -> 1/sqrt(text_hidden) for LLM and projector: HF's init leaves a tiny random LLM
    # too flat to learn through, and Gemma's projection weight starts at zero (docs/tiny-models.md).
    init_std: float | None = None
    # The soft-embedding norm's weight (Gemma norms scale by 1 + weight): nonzero, so that a
    # path that skips or misplaces the norm gives different numbers.
    norm_weight_std: float = 0.5
    position_embedding_std: float = 0.5  # pooled tokens keep where things are (docs/tiny-models.md)
    seed: int = 0

    def __post_init__(self):
        if self.vision_hidden % self.vision_heads or self.text_heads % self.text_kv_heads:
            raise ValueError("vision_hidden must split into vision_heads, text_heads into text_kv_heads")
        grid, side = self.image_size // self.patch_size, math.isqrt(self.mm_tokens_per_image)
        if self.image_size % self.patch_size or side * side != self.mm_tokens_per_image or grid % side:
            raise ValueError(f"the {grid} x {grid} patch grid must pool evenly to {self.mm_tokens_per_image} tokens")

    @property
    def resolved_init_std(self) -> float:
        return self.init_std if self.init_std is not None else 1.0 / math.sqrt(self.text_hidden)


def _training_corpus() -> list[str]:
    """Deterministic chat-formatted lines about the synthetic videos (data/tiny_tokenizer.py)."""
    return video_corpus("user\n{question}\nmodel\n{answer}\n")


def build_tokenizer(vocab_size: int = 446) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Gemma's <pad>/<eos>/<bos>/<unk> first and its turn and image tokens on top."""
    bpe = byte_level_bpe(_training_corpus(), vocab_size, special=[PAD, EOS, BOS, UNK],
                         added=[START_TURN, END_TURN, BOI, EOI, IMAGE])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,  # as the -it tokenizers; generation also stops at <end_of_turn>
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens=dict(NAMED_TOKENS),
        add_bos_token=True,
        add_eos_token=False,
        padding_side="left",
        clean_up_tokenization_spaces=False,  # keep decode(encode(s)) == s
        model_max_length=8192,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer: PreTrainedTokenizerFast, cfg: TinyGemma3Config) -> Gemma3Processor:
    # The PIL class is built explicitly (no torchvision needed); it saves as "Gemma3ImageProcessor",
    # so loading picks the torchvision backend where installed, PIL otherwise.
    image_processor = Gemma3ImageProcessorPil(
        size={"height": cfg.image_size, "width": cfg.image_size},
        resample=2,  # bilinear, as the conversion script sets it
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
        do_pan_and_scan=False,
    )
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                           image_seq_length=cfg.mm_tokens_per_image)


def build_config(tokenizer: PreTrainedTokenizerFast, cfg: TinyGemma3Config) -> Gemma3Config:
    vision_config = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=False,  # as Gemma 3: the projector reads last_hidden_state
    )
    text_config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        head_dim=cfg.head_dim,
        query_pre_attn_scalar=cfg.head_dim,
        sliding_window=cfg.sliding_window,
        layer_types=["sliding_attention", "full_attention"][: cfg.text_layers],
        max_position_embeddings=4096,
        initializer_range=cfg.resolved_init_std,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,  # as every Gemma 3
    )
    return Gemma3Config(
        vision_config=vision_config,
        text_config=text_config,
        mm_tokens_per_image=cfg.mm_tokens_per_image,
        boi_token_index=tokenizer.convert_tokens_to_ids(BOI),
        eoi_token_index=tokenizer.convert_tokens_to_ids(EOI),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        tie_word_embeddings=True,
    )


def _reinit(model: Gemma3ForConditionalGeneration, cfg: TinyGemma3Config) -> None:
    """HF's init is too flat where the LLM learns through and leaves Gemma's projection at zero
    (docs/tiny-models.md); other vision params keep it."""
    std = cfg.resolved_init_std
    reinit_linear_and_embeddings([model.model.language_model], std)  # lm_head is tied to the embedding
    projector = model.model.multi_modal_projector
    embeddings = next(m for m in model.model.vision_tower.modules() if isinstance(m, SiglipVisionEmbeddings))
    with torch.no_grad():
        projector.mm_input_projection_weight.normal_(0.0, std)
        projector.mm_soft_emb_norm.weight.normal_(0.0, cfg.norm_weight_std)
        embeddings.position_embedding.weight.normal_(0.0, cfg.position_embedding_std)


def build_model(config: Gemma3Config, cfg: TinyGemma3Config, tokenizer) -> Gemma3ForConditionalGeneration:
    model = build_seeded(Gemma3ForConditionalGeneration, config, cfg.seed, lambda model: _reinit(model, cfg))
    # As the -it checkpoints: stop at <eos> or <end_of_turn>, and sample (top-k 64, top-p 0.95) by default.
    generation = model.generation_config
    generation.eos_token_id = [config.text_config.eos_token_id, tokenizer.convert_tokens_to_ids(END_TURN)]
    generation.update(do_sample=True, top_k=64, top_p=0.95, cache_implementation="hybrid")
    return model


def build_tiny_gemma3(out_dir: str | Path, cfg: TinyGemma3Config = TinyGemma3Config()) -> Path:
    """Write a loadable tiny Gemma 3 checkpoint (model, processor, tokenizer, template) to out_dir."""
    tokenizer = build_tokenizer(cfg.vocab_size)
    processor = build_processor(tokenizer, cfg)
    # The image processor also in its own file (preprocessor_config.json), as the real checkpoints have it.
    out_dir = save_replica(out_dir, (build_model(build_config(tokenizer, cfg), cfg, tokenizer), processor,
                                     processor.image_processor), RECIPE_FILE, cfg, init_std=cfg.resolved_init_std)
    layout = {"image_seq_length": cfg.mm_tokens_per_image, "processor_class": "Gemma3Processor"}
    (out_dir / "processor_config.json").write_text(json.dumps(layout, indent=2, sort_keys=True) + "\n")
    return out_dir


CLI = ReplicaCLI(build_tiny_gemma3, TinyGemma3Config, "Write a tiny random-weight Gemma 3 checkpoint.")


if __name__ == "__main__":  # the command line is redvillm.data.cli's: importing this module loads no click
    from redvillm.data.cli import replica_command

    replica_command(CLI)()
