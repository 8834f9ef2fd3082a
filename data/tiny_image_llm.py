"""A tiny image LLM of our own: LLaVA-1.5's architecture trained from scratch on synthetic image QA.

The random-weight replica (tiny_llava) proves plumbing; this one *is* an image LLM: its CLIP
tower, projector and Llama are trained together (from a seed, on CPU, in a few minutes) to
answer questions about shapes, colours, places and counts in English and Chinese
(redvillm.data.image_qa). It is saved exactly like llava-hf checkpoints (safetensors, config,
tokenizer, processor, chat template), so every redvillm command loads it as the "llava" family,
and the video stage reuses its image-text alignment as the paper reuses LLaVA's.

Written to OUT_DIR: the tiny_llava file set, plus
    image_llm_recipe.json    the ImageLLMRecipe it was trained with (and transformers/torch versions)
    image_qa_accuracy.json   held-out exact-match accuracy per question kind and language

Determinism: weights are a function of the recipe (seed included) on one torch version and
thread count: the same command gives byte-identical model.safetensors.

    python -m redvillm.data.tiny_image_llm OUT_DIR [--steps 2000] [--seed 0]
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import PreTrainedTokenizerFast

from redvillm.data.image_qa import COLOUR_ZH, NUMBER_ZH, SHAPE_ZH, SIDE_ZH, sample
from redvillm.data.synthetic_scenes import PALETTE
from redvillm.data.tiny_llava import (
    BOS,
    EOS,
    IMAGE_TOKEN,
    PAD,
    UNK,
    TinyLlavaConfig,
    build_config,
    build_model,
    build_processor,
)
from redvillm.data.tiny_tokenizer import byte_level_bpe
from redvillm.chat import QUESTION_SLOT, ChatFormat
from redvillm.settings import setting

RECIPE_FILE = "image_llm_recipe.json"
ACCURACY_FILE = "image_qa_accuracy.json"
IGNORE = -100


@dataclass
class ImageLLMRecipe:
    """Architecture and training of the tiny image LLM; every field is a flag of its command (redvillm.data.cli)."""

    image_size: int = setting(64, "Image side in pixels.")
    patch_size: int = setting(16, "ViT patch side in pixels (64 / 16: 4 x 4 = 16 tokens per image and per frame).")
    vision_hidden: int = setting(64, "Width of the CLIP tower.")
    vision_layers: int = setting(2, "Layers of the CLIP tower.")
    text_hidden: int = setting(128, "Width of the Llama LLM.")
    text_layers: int = setting(2, "Layers of the Llama LLM.")
    text_heads: int = setting(4, "Attention heads of the Llama LLM.")
    vocab_size: int = setting(600, "Size of the byte-level BPE vocabulary.")
    steps: int = setting(2000, "Training steps.")
    batch_size: int = setting(32, "Image-QA samples per step.")
    lr: float = setting(5e-4, "Peak AdamW learning rate (linear warm-up times a cosine decay).")
    warmup: int = setting(100, "Warm-up steps.")
    eval_samples: int = setting(400, "Held-out samples for the accuracy.")
    threads: int = setting(1, "torch threads: part of the determinism contract (the shipped weights used 1).")
    seed: int = setting(0, "Seed of the weights and of the training stream of images and questions.")

    def model_config(self) -> TinyLlavaConfig:
        return TinyLlavaConfig(
            image_size=self.image_size, patch_size=self.patch_size, vision_hidden=self.vision_hidden,
            vision_layers=self.vision_layers, vision_heads=4, text_hidden=self.text_hidden,
            text_layers=self.text_layers, text_heads=self.text_heads, seed=self.seed,
        )


def _corpus() -> list[str]:
    """Text the BPE merges follow: image QA and the video questions, in English and Chinese."""
    lines = [f"USER: \n{sample(10_000 + i, i).question} ASSISTANT: {sample(10_000 + i, i).answer}" for i in range(400)]
    words = list(PALETTE) + list(COLOUR_ZH.values()) + list(SHAPE_ZH.values()) + list(SIDE_ZH.values())
    words += list(NUMBER_ZH.values())
    video = ["Which colour appeared first, red or blue?", "Which way does the square move, left or right?",
             "What colour does the square turn into?", "How many times does the square appear?",
             "哪个颜色先出现？", "方块往哪个方向移动？", "The square moves to the right.", "The red square appeared first."]
    return lines + video + [" ".join(words)]


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = byte_level_bpe(_corpus(), vocab_size, special=[UNK, BOS, EOS], added=[IMAGE_TOKEN, PAD])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD, add_bos_token=True,
        add_eos_token=False, clean_up_tokenization_spaces=False, model_max_length=4096,
    )


class _Encoder:
    """Question/answer -> (input ids with the image expanded, labels on the answer + eos), through
    redvillm's ChatFormat: the same prompt and answer split the video stage uses later."""

    def __init__(self, processor, num_image_tokens: int):
        self.tokenizer = processor.tokenizer
        self.image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.num_image_tokens = num_image_tokens
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION_SLOT}]}]
        self.chat = ChatFormat(self.tokenizer, processor.apply_chat_template, messages, self.image_id)
        self._encoded: dict[tuple[str, str], tuple[list[int], list[int]]] = {}  # a few hundred distinct pairs

    def __call__(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        if (question, answer) not in self._encoded:
            chat = self.chat.encode(question, answer)
            at = chat.placeholder_at
            prompt = chat.prompt_ids[:at] + [self.image_id] * self.num_image_tokens + chat.prompt_ids[at + 1:]
            self._encoded[question, answer] = (prompt + chat.answer_ids, [IGNORE] * len(prompt) + chat.answer_ids)
        return self._encoded[question, answer]


def _batch(items, encoder: _Encoder, mean: torch.Tensor, std: torch.Tensor, pad_id: int):
    rows = [encoder(item.question, item.answer) for item in items]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id)
    labels = torch.full((len(rows), length), IGNORE)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)], labels[i, : len(ids)], mask[i, : len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
    images = torch.from_numpy(np.stack([item.image for item in items])).permute(0, 3, 1, 2).float() / 255
    return dict(input_ids=input_ids, attention_mask=mask, labels=labels, pixel_values=(images - mean) / std)


@torch.no_grad()
def evaluate(model, encoder: _Encoder, norm, pad_id: int, seed: int, count: int, size: int) -> dict:
    """Exact match under greedy decoding, per kind and language. Greedy decoding reproduces the
    answer iff every teacher-forced argmax on the answer (and eos) is right, so one forward says it."""
    was_training = model.training
    model.eval()
    hits, totals = defaultdict(int), defaultdict(int)
    items = [sample(seed, i, size) for i in range(count)]
    for start in range(0, count, 64):
        chunk = items[start : start + 64]
        batch = _batch(chunk, encoder, *norm, pad_id)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        right = ((logits.argmax(-1) == targets) | (targets == IGNORE)).all(dim=1)
        for item, ok in zip(chunk, right.tolist()):
            for key in (item.kind, f"{item.kind}/{item.language}", "all"):
                hits[key] += ok
                totals[key] += 1
    model.train(was_training)
    return {key: round(hits[key] / totals[key], 4) for key in sorted(totals)}


def shipped_image_llm() -> Path:
    """The image LLM this recipe trained with its defaults, shipped in data/assets (3.4 MB)."""
    path = Path(__file__).parent / "assets" / "tiny-image-llm"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}: no shipped image LLM; build one with "
                                "`python -m redvillm.data.tiny_image_llm DIR` and pass --image-llm DIR")
    return path


def held_out_seed(recipe: ImageLLMRecipe) -> int:
    """Evaluation draws from another seed's stream of images and questions than training."""
    return recipe.seed + 1_000_003


def evaluate_checkpoint(model_dir: str | Path, samples: int | None = None) -> dict:
    """Re-measure a saved image LLM on its recipe's held-out stream (the first `samples` items)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model_dir = Path(model_dir)
    known = ImageLLMRecipe.__dataclass_fields__
    recipe = ImageLLMRecipe(**{k: v for k, v in json.loads((model_dir / RECIPE_FILE).read_text()).items() if k in known})
    processor = AutoProcessor.from_pretrained(model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    image = processor.image_processor
    norm = (torch.tensor(image.image_mean).view(1, 3, 1, 1), torch.tensor(image.image_std).view(1, 3, 1, 1))
    encoder = _Encoder(processor, recipe.model_config().num_image_tokens)
    return evaluate(model, encoder, norm, processor.tokenizer.pad_token_id, held_out_seed(recipe),
                    samples or recipe.eval_samples, recipe.image_size)


def train_image_llm(out_dir: str | Path, recipe: ImageLLMRecipe = ImageLLMRecipe(), log=print) -> dict:
    """Train the tiny image LLM and save it as a llava-hf style checkpoint; returns the accuracy."""
    out_dir = Path(out_dir)
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    cfg = recipe.model_config()
    tokenizer = build_tokenizer(recipe.vocab_size)
    processor = build_processor(tokenizer, cfg)
    model = build_model(build_config(tokenizer, cfg), cfg).train()
    encoder = _Encoder(processor, cfg.num_image_tokens)
    norm = (torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1),
            torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1))
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / recipe.warmup) * 0.5
                                                 * (1 + math.cos(math.pi * min(step, recipe.steps) / recipe.steps)))
    started = time.perf_counter()
    for step in range(recipe.steps):
        indices = torch.randint(0, 2**31 - 1, (recipe.batch_size,), generator=generator).tolist()
        batch = _batch([sample(recipe.seed, i, recipe.image_size) for i in indices], encoder, *norm,
                       tokenizer.pad_token_id)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == recipe.steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - started:6.1f}s")
    accuracy = evaluate(model, encoder, norm, tokenizer.pad_token_id, held_out_seed(recipe),
                        recipe.eval_samples, recipe.image_size)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    versions = {"transformers_version": transformers.__version__, "torch_version": torch.__version__}
    (out_dir / RECIPE_FILE).write_text(json.dumps({**asdict(recipe), **versions}, indent=2, sort_keys=True) + "\n")
    (out_dir / ACCURACY_FILE).write_text(json.dumps(accuracy, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    log(f"held-out exact match: {accuracy['all']:.3f}  ({time.perf_counter() - started:.0f}s)")
    return accuracy


if __name__ == "__main__":  # the command line is redvillm.data.cli's: importing this module loads no click
    from redvillm.data.cli import image_llm_command

    image_llm_command()()
