"""What every family must do, checked on its tiny replica: one row of CASES per checkpoint type.

- T = 1 is the image path: with one frame, pooling "temporal" and no temporal module, our logits
  equal the backbone's own image forward (transformers, same weights, the processor's prompt),
  for an English and a Chinese question, and so does greedy generation;
- our frame preprocessing equals the checkpoint's image processor (within one uint8 level);
- batched, left-padded generation of videos with different T equals generating each alone;
- extract -> train -> predict -> judge -> ask through the CLIs, with a Chinese question;
- a cache of another family is refused in one line; --image-size is refused by fixed-size towers.

Also: the replica's command rebuilds it byte for byte, and its tokenizer round-trips any text.

A new family adds a row (its replica's module, how its processor makes reference inputs when
AutoProcessor does not, its N and D) and keeps only what is its own in tests/test_family_<name>.py.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    InternVLProcessor,
    ProcessorMixin,
)

from redvillm import open_cache
from redvillm.batching import VideoSample, collate
from redvillm.data.cli import replica_command
from redvillm.errors import UserError
from redvillm.evaluate.cli import main as eval_main
from redvillm.evaluate.predict import read_predictions
from redvillm.extract.cli import main as extract_main
from redvillm.families.qwen2_vl import patchify
from redvillm.families.registry import load_family
from redvillm.frames import normalize, resize_and_crop
from redvillm.model_io import build_video_llm
from redvillm.train.cli import main as train_main

CPU = torch.device("cpu")
QUESTIONS = ["Which colour appeared first, red or blue?", "这个视频里的方块往哪个方向移动？"]
CHINESE = "哪个颜色先出现？"
FRAMES = 4  # per video in the CLI run


def user_turn(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def processor_inputs(model_dir: Path, question: str, image: np.ndarray) -> dict:
    """The checkpoint's own AutoProcessor on one image and the question."""
    processor = AutoProcessor.from_pretrained(model_dir)
    prompt = processor.apply_chat_template(user_turn(question), add_generation_prompt=True)
    return dict(processor(images=Image.fromarray(image), text=prompt, return_tensors="pt"))


def frame_tokens_from_pixel_values(family, encoder, inputs: dict, image: np.ndarray) -> torch.Tensor:
    """(1, N, D): our encoder on the processor's own pixel values."""
    return encoder(inputs["pixel_values"])


def our_pixel_values(family, encoder, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our preprocessing of (F, H, W, 3) uint8 frames, under the processor's output names."""
    spec = family.frame_preprocess()
    return {"pixel_values": normalize(resize_and_crop(frames, spec), spec, torch.float32)}


@dataclass(frozen=True)
class Case:
    name: str  # the checkpoint's model_type, as caches record it
    replica: tuple[str, ...]  # data/ module (and its command-line options) that writes the tiny replica
    num_patches: int  # N per frame
    hidden_size: int  # D
    other: str  # a family (row name) whose checkpoint must refuse this family's cache
    # (model_dir, question, uint8 image) -> the backbone's forward inputs for that image, as its processor makes them
    reference_inputs: Callable[[Path, str, np.ndarray], dict] = processor_inputs
    # (family, encoder, reference inputs, image) -> (1, N, D) frame tokens of that image
    frame_tokens: Callable = frame_tokens_from_pixel_values
    # (family, encoder, frames) -> {processor output name: tensor} for the preprocessing check
    pixels: Callable = our_pixel_values
    frame_shapes: tuple[tuple[int, int], ...] = ((240, 320), (320, 180))  # (H, W) of the test frames
    # The reference prompt goes on past ours (the backbone takes our path for an image only when
    # more follow): logits are compared on our prompt, greedy tokens by the reference's forward.
    continues: bool = False
    # (model_dir, uint8 image) -> {processor output name: tensor} for the preprocessing check;
    # None: the reference inputs' own
    reference_pixels: Callable[[Path, np.ndarray], dict] | None = None


def qwen_inputs(model_dir: Path, question: str, image: np.ndarray) -> dict:
    """What Qwen2VLProcessor(images=image, text=prompt) gives, built from its parts (the processor
    itself needs torchvision): the image processor's pixels and grid, <|image_pad|> x grid.prod() / 4."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pixels = AutoImageProcessor.from_pretrained(model_dir)(images=Image.fromarray(image), return_tensors="pt")
    prompt = tokenizer.apply_chat_template(user_turn(question), add_generation_prompt=True, tokenize=False)
    count = int(pixels["image_grid_thw"].prod()) // 4
    text = tokenizer(prompt.replace("<|image_pad|>", "<|image_pad|>" * count), return_tensors="pt")
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return dict(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"],
                mm_token_type_ids=(text["input_ids"] == image_id).int())


def qwen_frame_tokens(family, encoder, inputs: dict, image: np.ndarray) -> torch.Tensor:
    """Our pixels (the processor's are patchified; they are checked equal by the preprocessing test)."""
    return encoder(our_pixel_values(family, encoder, torch.from_numpy(image)[None])["pixel_values"])


def qwen_pixels(family, encoder, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    vision = family.config.vision_config
    pixels = our_pixel_values(family, encoder, frames)["pixel_values"]
    return {"pixel_values": patchify(pixels, vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size)}


def internvl_inputs(model_dir: Path, question: str, image: np.ndarray) -> dict:
    """InternVLProcessor itself, built from the checkpoint's parts with its torchvision-only video half
    left out (the one class check skipped for video_processor=None); one tile, as our frames."""
    processor_dict, _ = InternVLProcessor.get_processor_dict(model_dir)
    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, name, argument):
        return None if name == "video_processor" and argument is None else original(self, name, argument)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProcessorMixin, "check_argument_for_proper_class", check)
        processor = InternVLProcessor(image_processor=AutoImageProcessor.from_pretrained(model_dir),
                                      tokenizer=AutoTokenizer.from_pretrained(model_dir), video_processor=None,
                                      image_seq_length=processor_dict["image_seq_length"],
                                      chat_template=processor_dict["chat_template"])
    prompt = processor.apply_chat_template(user_turn(question), add_generation_prompt=True)
    return dict(processor(images=Image.fromarray(image), text=prompt, return_tensors="pt", crop_to_patches=False))


def hybrid_frame_tokens(family, encoder, inputs: dict, image: np.ndarray) -> torch.Tensor:
    """Both towers on the processor's own pixels for each resolution."""
    return encoder.towers(inputs["pixel_values"], inputs["high_res_pixel_values"])


def hybrid_pixels(family, encoder, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    """Frames leave preprocessing as levels; the encoder makes both resolutions from them."""
    levels = our_pixel_values(family, encoder, frames)["pixel_values"]
    return dict(zip(("pixel_values", "high_res_pixel_values"), encoder.pixel_values(levels)))


def onevision_inputs(model_dir: Path, question: str, image: np.ndarray) -> dict:
    """LLaVA-OneVision sends an image alone as any-resolution tiles, and each image of a multi-image
    prompt as its base tile + image_newline: our path. So the reference is a two-image conversation
    whose first L tokens are our prompt, [user: image, question] [assistant: ""] [user: image, text],
    through its image processor (multi-image mode) and template, each "<image>" expanded as its
    processor does in that mode (num_image_tokens + 1; the model checks the count)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    turns = user_turn(question) + [{"role": "assistant", "content": [{"type": "text", "text": ""}]},
                                   {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Next?"}]}]
    prompt = tokenizer.apply_chat_template(turns, tokenize=False)
    second = random_image(72, 72, seed=99)
    pixels = AutoImageProcessor.from_pretrained(model_dir)(images=[[Image.fromarray(image), Image.fromarray(second)]],
                                                           return_tensors="pt")
    per_image = ProcessorMixin.get_processor_dict(model_dir)[0]["num_image_tokens"] + 1
    text = tokenizer(prompt.replace("<image>", "<image>" * per_image), return_tensors="pt")
    return dict(text, **pixels)


def greedy_by_forward(model, inputs: dict, length: int, steps: int) -> list[int]:
    """Greedy tokens after the first `length` ids of a longer reference prompt, each from the model's
    own forward on prompt + tokens so far + the rest (causal: the rest cannot change them)."""
    ids, tokens = inputs["input_ids"], []
    for _ in range(steps):
        grown = torch.cat([ids[:, :length], torch.tensor([tokens], dtype=ids.dtype), ids[:, length:]], dim=1)
        logits = model(**{**inputs, "input_ids": grown, "attention_mask": torch.ones_like(grown)}).logits
        tokens.append(int(logits[0, length + len(tokens) - 1].argmax()))
        if tokens[-1] == model.generation_config.eos_token_id:
            break
    return tokens


def onevision_base_tile(model_dir: Path, image: np.ndarray) -> dict:
    """The image processor's base tile of a lone image (the whole image squashed), not its tiles."""
    pixels = AutoImageProcessor.from_pretrained(model_dir)(images=Image.fromarray(image), return_tensors="pt")
    return {"pixel_values": pixels["pixel_values"][:, 0]}


def gemma3_inputs(model_dir: Path, question: str, image: np.ndarray) -> dict:
    """Gemma's template writes <bos> itself (processor.apply_chat_template(tokenize=True) adds none)."""
    processor = AutoProcessor.from_pretrained(model_dir)
    prompt = processor.apply_chat_template(user_turn(question), add_generation_prompt=True)
    return dict(processor(images=Image.fromarray(image), text=prompt, add_special_tokens=False, return_tensors="pt"))


QWEN = dict(reference_inputs=qwen_inputs, frame_tokens=qwen_frame_tokens, pixels=qwen_pixels,
            frame_shapes=((224, 224),))  # its processor keeps the aspect ratio, our frames are square

CASES = [
    Case("llava", ("tiny_llava",), 49, 64, other="deepseek_vl"),
    Case("qwen2_vl", ("tiny_qwen2_vl",), 256, 32, other="llava", **QWEN),
    Case("qwen2_5_vl", ("tiny_qwen2_vl", "--variant", "qwen2_5_vl"), 256, 32, other="qwen2_vl", **QWEN),
    Case("deepseek_vl", ("tiny_deepseek_vl",), 16, 64, other="llava"),
    Case("deepseek_vl_hybrid", ("tiny_deepseek_vl_hybrid",), 36, 128, other="deepseek_vl",
         frame_tokens=hybrid_frame_tokens, pixels=hybrid_pixels),
    Case("internvl", ("tiny_internvl",), 64, 64, other="llava", reference_inputs=internvl_inputs),
    Case("llava_onevision", ("tiny_llava_onevision",), 25, 32, other="llava", reference_inputs=onevision_inputs,
         frame_tokens=lambda family, encoder, inputs, image: encoder(inputs["pixel_values"][0]), continues=True,
         reference_pixels=onevision_base_tile),

    Case("gemma3", ("tiny_gemma3",), 16, 64, other="llava", reference_inputs=gemma3_inputs),
]
BY_NAME = {case.name: case for case in CASES}
IDS = [case.name for case in CASES]


@pytest.fixture(scope="session")
def replica(tiny_model):
    """replica(case) -> the case's tiny checkpoint, built once per session."""
    return lambda case: tiny_model(case.name, *case.replica)


@pytest.fixture(scope="session")
def extracted(replica, synthetic_videos, tmp_path_factory):
    """extracted(case) -> the sample videos cached by redvillm-extract with the case's replica, once per session."""
    caches: dict[str, Path] = {}

    def get(case: Case) -> Path:
        if case.name not in caches:
            out = tmp_path_factory.mktemp(f"cache-{case.name}") / "cache.h5"
            invoke(extract_main, synthetic_videos, out, "--model", replica(case), "--num-frames", FRAMES,
                   "--decode-workers", 1, "--device", "cpu")
            caches[case.name] = out
        return caches[case.name]

    return get


def invoke(command, *args, exit_code=0):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == exit_code, result.stderr[-2000:]
    return result


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_replica_rebuilds_byte_identical_and_its_tokenizer_round_trips_any_text(case, replica, tmp_path):
    module, *args = case.replica
    again = tmp_path / "again"
    listing = invoke(replica_command(importlib.import_module(f"redvillm.data.{module}").CLI), again, *args).output
    assert "model.safetensors" in listing  # the command lists what it wrote
    built = sorted(p.name for p in replica(case).iterdir())
    assert sorted(p.name for p in again.iterdir()) == built and "model.safetensors" in built
    for name in built:
        assert (again / name).read_bytes() == (replica(case) / name).read_bytes(), name
    tokenizer, config = AutoTokenizer.from_pretrained(again), AutoConfig.from_pretrained(again)
    assert config.model_type == case.name and config.text_config.eos_token_id == tokenizer.eos_token_id
    for text in ("The red square moves to the left.", "  It was GREEN, then blue!\n ", "红色的方块向左移动。",
                 "mixed 中文 and English, émoji 🙂 too"):
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


@pytest.mark.parametrize("question", QUESTIONS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_one_frame_equals_backbone_image_forward(case, question, replica, caplog):
    model_dir = replica(case)
    image = random_image(*case.frame_shapes[0])
    inputs = case.reference_inputs(model_dir, question, image)
    reference = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = reference(**inputs).logits
        if not case.continues:
            generated = reference.generate(**inputs, max_new_tokens=6, do_sample=False)
            expected_answer = generated[0, inputs["input_ids"].shape[1]:]

    caplog.set_level(logging.INFO, logger="redvillm.families")
    family = load_family(str(model_dir))
    encoder = family.load_frame_encoder(CPU, torch.float32)
    assert "loading the whole model" not in caplog.text  # the tower came from its own tensors only
    assert (encoder.num_patches, encoder.hidden_size) == (case.num_patches, case.hidden_size)
    assert family.frame_token_width() in (None, case.hidden_size)
    llm = build_video_llm(str(model_dir), "temporal", "none", CPU, torch.float32)
    with torch.no_grad():
        frame_tokens = case.frame_tokens(family, encoder, inputs, image)  # (T=1, N, D): a one-frame video
        assert frame_tokens.shape == (1, case.num_patches, case.hidden_size)
        temporal, spatial = family.pool(frame_tokens)
        sample = VideoSample(llm.chat.encode(question), temporal, spatial)
        batch = collate([sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0, with_labels=False)
        ours = llm.logits(batch)
    length = batch.input_ids.shape[1]
    if case.continues:
        assert inputs["input_ids"].shape[1] > length + case.num_patches  # the other image's tokens come after ours
        with torch.no_grad():
            expected_answer = torch.tensor(greedy_by_forward(reference, inputs, length, steps=6))
        expected = expected[:, :length]
    else:
        assert inputs["input_ids"].shape[1] == length
    assert torch.equal(batch.input_ids, inputs["input_ids"][:, :length])  # same prompt, same splice position
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    llm.chat.decode = lambda row: row.tolist()  # compare ids: the backbone's own generate, step by step
    assert llm.generate(batch, max_new_tokens=6)[0] == expected_answer.tolist()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_preprocessing_equals_the_image_processor(case, replica):
    model_dir = replica(case)
    family = load_family(str(model_dir))
    encoder = family.load_frame_encoder(CPU, torch.float32)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    # One uint8 level after normalisation, at the smallest std of any resolution the processor makes.
    level = 1 / 255 / min(min(getattr(processor, name)) for name in ("image_std", "high_res_image_std")
                          if hasattr(processor, name))
    for seed, hw in enumerate(case.frame_shapes):
        image = random_image(*hw, seed=seed + 1)
        if case.reference_pixels is not None:
            reference = case.reference_pixels(model_dir, image)
        else:
            reference = case.reference_inputs(model_dir, QUESTIONS[0], image)
        ours = case.pixels(family, encoder, torch.from_numpy(image)[None])
        for name, pixels in ours.items():
            assert pixels.shape == reference[name].shape, name
            gap = (pixels - reference[name]).abs() / level
            # Pillow's fixed-point filter: a pixel may round one level apart, rarely.
            assert gap.max() <= 1.01 and (gap > 0.5).float().mean() < 0.02, (name, hw, gap.max().item())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_batched_generation_equals_one_by_one(case, replica):
    """Left-padded videos with different T (English and Chinese) generate as they do alone."""
    llm = build_video_llm(str(replica(case)), "both", "copy", CPU, torch.float32)
    family = load_family(str(replica(case)))
    generator = torch.Generator().manual_seed(0)
    samples = []
    for question, frames in zip(QUESTIONS, (3, 5)):
        tokens = torch.randn(frames, case.num_patches, case.hidden_size, generator=generator)
        samples.append(VideoSample(llm.chat.encode(question), *family.pool(tokens)))
    pad = llm.chat.tokenizer.pad_token_id

    def batch(rows):
        return collate(rows, llm.adapter.layout, llm.chat.placeholder_id, pad, padding_side="left", with_labels=False)

    llm.chat.decode = lambda ids: ids.tolist()
    together = llm.generate(batch(samples), max_new_tokens=4)
    assert together == [llm.generate(batch([sample]), max_new_tokens=4)[0] for sample in samples]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_image_size_is_taken_or_refused_in_one_line(case, replica):
    model_dir = str(replica(case))
    if type(load_family(model_dir)).takes_image_size:  # any-resolution towers: frames of that size
        assert load_family(model_dir, image_size=448).frame_preprocess().fixed_output_hw() == (448, 448)
        return
    with pytest.raises(UserError) as err:
        load_family(model_dir, image_size=96)
    assert "\n" not in str(err.value) and "--image-size" in str(err.value) and model_dir in str(err.value)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_extract_train_predict_judge_ask_through_the_clis(case, replica, extracted, qa_file, synthetic_videos,
                                                          tmp_path):
    model_dir, cache_path = replica(case), extracted(case)
    cache = open_cache(cache_path)
    info = cache.info
    assert (info["family"], info["num_patches"], info["hidden_size"]) == (case.name, case.num_patches, case.hidden_size)
    assert len(cache) == 8 and cache["order_0000"].shape == (FRAMES, case.num_patches, case.hidden_size)
    assert cache["order_0000"].dtype == np.float16

    run = tmp_path / "run"
    trained = invoke(train_main, cache_path, "--annotations", qa_file, "--model", model_dir, "--output", run,
                     "--max-steps", 2, "--batch-size", 4, "--lr", 3e-3, "--num-workers", 0, "--device", "cpu")
    saved = load_file(run / "adapter.safetensors")
    projector = load_family(str(model_dir)).projector(load_family(str(model_dir)).load_backbone(CPU, torch.float32))
    for part in ("spatial_proj", "temporal_proj"):  # g_z and its copy g_t: the backbone's projector
        own = {k.removeprefix(f"{part}."): v.shape for k, v in saved.items() if k.startswith(f"{part}.")}
        assert own == {k: v.shape for k, v in projector.state_dict().items()}
    assert {k.split(".")[0] for k in saved} == {"spatial_proj", "temporal_proj"}
    assert f"trainable parameters: {sum(v.numel() for v in saved.values()):,}" in trained.stderr
    meta = json.loads((run / "redvillm_config.json").read_text(encoding="utf-8"))
    assert (meta["family"], meta["num_patches"], meta["hidden_size"]) == (case.name, case.num_patches, case.hidden_size)

    rows = json.loads(qa_file.read_text()) + [{"video_id": "order_0000", "q": CHINESE, "a": "红色"}]
    questions = tmp_path / "qa_zh.json"
    questions.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    invoke(eval_main, "predict", "--model-dir", run, "--cache", cache_path, "--questions", questions,
           "--output", preds, "--batch-size", 4, "--max-new-tokens", 3, "--device", "cpu")
    records = read_predictions(preds)
    assert len(records) == len(rows) and all(isinstance(r["pred"], str) for r in records.values())
    assert CHINESE in preds.read_text(encoding="utf-8")  # written as text, not \\u escapes
    invoke(eval_main, "judge", preds, "--task", "qa", "--output", tmp_path / "judged.json")
    assert json.loads((tmp_path / "judged.json").read_text(encoding="utf-8"))["metrics"]["count"] == len(rows)

    asked = invoke(eval_main, "ask", run, synthetic_videos / "order_0000.mp4", QUESTIONS[1], "--max-new-tokens", 3,
                   "--device", "cpu")  # extracts the video on the fly, as the cache was made
    assert asked.stdout.endswith("\n")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_another_familys_checkpoint_refuses_the_cache(case, replica, extracted, qa_file, tmp_path):
    other = replica(BY_NAME[case.other])
    result = invoke(train_main, extracted(case), "--annotations", qa_file, "--model", other, "--output",
                    tmp_path / "run", "--max-steps", 1, "--num-workers", 0, "--device", "cpu", exit_code=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # the progress display leaves a blank one
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert f"({case.name})" in lines[0] and "re-extract" in lines[0]
    assert not (tmp_path / "run" / "adapter.safetensors").exists()


def test_a_cache_as_wide_as_another_checkpoint_is_refused(extracted, qa_file, tmp_path):
    """Same provenance (vision type, layer, strategy) but another vision width: refused before the LLM loads."""
    from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava

    narrow = build_tiny_llava(tmp_path / "narrow", TinyLlavaConfig(vision_hidden=32))
    result = invoke(train_main, extracted(BY_NAME["llava"]), "--annotations", qa_file, "--model", narrow,
                    "--output", tmp_path / "run", "--max-steps", 1, "--num-workers", 0, "--device", "cpu", exit_code=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "hidden_size is 64 in the cache, 32 for --model" in lines[0], result.stderr
