"""The tiny LLaVA replica must load and run through the same HF calls as a real checkpoint."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may download

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoProcessor,
    LlavaForConditionalGeneration,
)

from redvillm.data.cli import replica_command
from redvillm.data.tiny_llava import CHAT_TEMPLATE, CLI, TinyLlavaConfig, build_tiny_llava, build_tokenizer

QUESTION = "Which colour appeared first?"
USER_TURN = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}


@pytest.fixture(scope="module")
def model_dir(tiny_llava):
    return tiny_llava


@pytest.fixture(scope="module")
def processor(model_dir):
    return AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    return LlavaForConditionalGeneration.from_pretrained(model_dir).eval()


def _image(height=240, width=320, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _prompt_inputs(processor):
    prompt = processor.apply_chat_template([USER_TURN], add_generation_prompt=True)
    return processor(images=_image(), text=prompt, return_tensors="pt")


def test_round_trip_through_auto_classes(model_dir, processor, model):
    config = AutoConfig.from_pretrained(model_dir)
    assert config.model_type == "llava"
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    image_processor = AutoImageProcessor.from_pretrained(model_dir)
    # CLIPImageProcessor with torchvision, CLIPImageProcessorPil without.
    assert type(image_processor).__name__.startswith("CLIPImageProcessor")
    assert image_processor.size == {"shortest_edge": 224}
    assert image_processor.crop_size == {"height": 224, "width": 224}
    assert image_processor.resample == 3 and image_processor.do_convert_rgb

    inputs = _prompt_inputs(processor)
    assert inputs["pixel_values"].shape == (1, 3, 224, 224)
    num_image_tokens = int((inputs["input_ids"] == config.image_token_id).sum())
    assert num_image_tokens == (224 // 32) ** 2 == TinyLlavaConfig().num_image_tokens == 49
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_saved_files(model_dir):
    names = {path.name for path in model_dir.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "tiny_llava.json",
    } <= names
    # What llava-hf ships; the loader picks the torchvision or PIL backend itself.
    preprocessor = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "CLIPImageProcessor"
    assert (model_dir / "model.safetensors").stat().st_size < 5_000_000
    weights = load_file(model_dir / "model.safetensors")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())
    recipe = json.loads((model_dir / "tiny_llava.json").read_text())
    assert recipe["seed"] == 0 and recipe["init_std"] == pytest.approx(0.125)


def test_init_follows_recipe(model):
    std = TinyLlavaConfig().resolved_init_std
    embed = model.get_input_embeddings().weight
    assert embed.std().item() == pytest.approx(std, rel=0.1)
    projector = model.model.multi_modal_projector
    assert projector.linear_1.weight.std().item() == pytest.approx(std, rel=0.1)
    assert torch.count_nonzero(projector.linear_1.bias) == 0
    position_table = next(p for n, p in model.named_parameters() if n.endswith("position_embedding.weight"))
    assert position_table.std().item() == pytest.approx(0.5, rel=0.1)


def test_the_seed_changes_the_weights_only(tmp_path, model_dir):
    """(Rebuilding byte for byte and tokenizer round trips: the conformance suite, for every replica.)"""
    other = build_tiny_llava(tmp_path / "other", TinyLlavaConfig(seed=1))
    assert (other / "model.safetensors").read_bytes() != (model_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()


def test_tokenizer_adds_llamas_bos(processor):
    tokenizer = processor.tokenizer
    ids = tokenizer("红色的方块向左移动。").input_ids
    assert ids[0] == tokenizer.bos_token_id  # Llama prepends <s>
    assert tokenizer.decode(ids, skip_special_tokens=True) == "红色的方块向左移动。"


def test_special_tokens_match_config(model_dir, processor):
    tokenizer, config = processor.tokenizer, AutoConfig.from_pretrained(model_dir)
    image_ids = tokenizer("<image>", add_special_tokens=False).input_ids
    assert image_ids == [config.image_token_id]
    assert tokenizer("a<image>b", add_special_tokens=False).input_ids.count(config.image_token_id) == 1
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token)
    assert specials == ("<s>", "</s>", "<unk>", "<pad>")
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.text_config.eos_token_id == tokenizer.eos_token_id
    # skipped on decode like llava-hf's "<image>", so answers decode without placeholders
    ids = tokenizer("USER: <image>\nhi ASSISTANT: red</s>").input_ids
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "USER: \nhi ASSISTANT: red"
    assert len(build_tokenizer()) == len(tokenizer)


def test_chat_template_renders_llava_1_5_prompt(processor):
    assert processor.chat_template == CHAT_TEMPLATE
    prompt = processor.apply_chat_template([USER_TURN], add_generation_prompt=True)
    assert prompt == f"USER: <image>\n{QUESTION} ASSISTANT:"
    answer = {"role": "assistant", "content": [{"type": "text", "text": "red"}]}
    with_answer = processor.apply_chat_template([USER_TURN, answer])
    assert with_answer == f"USER: <image>\n{QUESTION} ASSISTANT: red</s>"
    follow_up = {"role": "user", "content": [{"type": "text", "text": "And last?"}]}
    two_turns = processor.apply_chat_template([USER_TURN, answer, follow_up], add_generation_prompt=True)
    assert two_turns == f"USER: <image>\n{QUESTION} ASSISTANT: red</s>USER: And last? ASSISTANT:"
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "red"}]
    assert processor.apply_chat_template(plain) == "USER: hi ASSISTANT: red</s>"


def test_cli_writes_a_loadable_model(tmp_path):
    result = CliRunner().invoke(replica_command(CLI), [str(tmp_path / "cli"), "--seed", "3", "--image-size", "64"])
    assert result.exit_code == 0, result.output
    config = AutoConfig.from_pretrained(tmp_path / "cli")
    assert config.vision_config.image_size == 64
    assert json.loads((tmp_path / "cli" / "tiny_llava.json").read_text())["seed"] == 3
