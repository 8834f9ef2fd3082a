"""LLaVA-OneVision on a tiny replica: the T = 1 oracle against the model's own multi-image
forward, the base-tile preprocessing against its image processor, and extract -> train ->
predict / ask through the CLIs."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoTokenizer, LlavaOnevisionForConditionalGeneration

from redvillm import open_cache
from redvillm.batching import VideoSample, collate
from redvillm.data.tiny_llava_onevision import build_tiny_llava_onevision
from redvillm.evaluate.cli import main as eval_main
from redvillm.evaluate.predict import read_predictions
from redvillm.extract.cli import main as extract_main
from redvillm.families.registry import load_family
from redvillm.frames import normalize, resize_and_crop
from redvillm.model_io import build_video_llm
from redvillm.train.cli import main as train_main

QUESTIONS = ["Which colour appeared first, red or blue?", "这个视频里的方块往哪个方向移动？"]
ANSWER = "The red one, 红色。"
CHINESE = "哪个颜色先出现？"
CPU = ["--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_llava_onevision(tmp_path_factory):
    """A random-weight LlavaOnevisionForConditionalGeneration saved with save_pretrained (72 px tile, 5 x 5 patches)."""
    return build_tiny_llava_onevision(tmp_path_factory.mktemp("models") / "tiny-llava-onevision")


def _images(seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, hw + (3,), dtype=np.uint8)) for hw in ((60, 90), (72, 72))]


def _reference(model_dir, question: str):
    """The backbone's own forward of a two-image conversation whose first turn is our prompt
    and answer: [user: frame, question] [assistant: answer] [user: another image, text]."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this one?"}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    images = AutoImageProcessor.from_pretrained(model_dir)(images=[_images(0)], return_tensors="pt")
    assert images["batch_num_images"].tolist() == [2]  # the processor's multi-image mode: base tiles only
    # What LlavaOnevisionProcessor writes for an image of a multi-image prompt: its tile's tokens + the newline.
    per_image = json.loads((model_dir / "processor_config.json").read_text())["num_image_tokens"] + 1
    input_ids = tokenizer(text.replace("<image>", "<image>" * per_image), return_tensors="pt")["input_ids"]
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():  # the model checks the placeholder count against its own features
        logits = model(input_ids=input_ids, **images).logits
    return input_ids, logits, images["pixel_values"][0]  # (1, 3, h, w): the frame's base tile


@pytest.mark.parametrize("question", QUESTIONS)
def test_one_frame_equals_backbone_multi_image_forward(tiny_llava_onevision, question):
    """Causal attention: the reference's logits up to the end of our prompt + answer depend on those tokens alone."""
    input_ids, expected, frame = _reference(tiny_llava_onevision, question)
    family = load_family(str(tiny_llava_onevision))
    encoder = family.load_frame_encoder(torch.device("cpu"), torch.float32)
    llm = build_video_llm(str(tiny_llava_onevision), "temporal", "none", torch.device("cpu"), torch.float32)
    with torch.no_grad():
        temporal, spatial = family.pool(encoder(frame))  # (T=1, N, D): a one-frame video
        sample = VideoSample(llm.chat.encode(question, ANSWER), temporal, spatial)
        batch = collate([sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0)
        ours = llm.logits(batch)
    length = batch.input_ids.shape[1]
    assert torch.equal(batch.input_ids, input_ids[:, :length])  # same prompt, splice and answer
    assert input_ids.shape[1] > length + 25
    torch.testing.assert_close(ours, expected[:, :length], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(240, 320), (320, 180), (72, 72)])
def test_frames_match_the_base_tile_of_the_image_processor(tiny_llava_onevision, hw):
    """A frame is the processor's base tile (squashed to 72 x 72, no padding), not its any-resolution tiles."""
    processor = AutoImageProcessor.from_pretrained(tiny_llava_onevision)
    spec = load_family(str(tiny_llava_onevision)).frame_preprocess()
    assert spec.fixed_output_hw() == (72, 72) and not spec.pad_to_square
    frames = np.random.default_rng(1).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    reference = processor([Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    assert reference.shape[1] > 1 or hw == (72, 72)  # base tile + tiles for a single image
    mine = normalize(resize_and_crop(torch.from_numpy(frames), spec), spec, torch.float32)
    assert mine.shape == (2, 3, 72, 72)
    level = 1 / 255 / min(spec.std)
    assert (mine - reference[:, 0]).abs().max() <= 1.01 * level  # Pillow's fixed-point filter: a tie may round apart


def test_the_newline_follows_both_token_sets(tiny_llava_onevision):
    """[g_t(temporal) (T), g_z(spatial) (N), image_newline (1)], the newline frozen and never saved."""
    llm = build_video_llm(str(tiny_llava_onevision), "both", "copy", torch.device("cpu"), torch.float32)
    tokens = torch.randn(3, 25, 32)  # (T, N, D)
    temporal, spatial = load_family(str(tiny_llava_onevision)).pool(tokens)
    sample = VideoSample(llm.chat.encode(CHINESE), temporal, spatial)
    batch = collate([sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0, with_labels=False)
    with torch.no_grad():
        video = llm.embed(batch)[0][batch.input_ids[0] == llm.chat.placeholder_id]  # (T + N + 1, K)
        expected = torch.cat([llm.adapter.temporal_proj(temporal), llm.adapter.spatial_proj(spatial),
                              llm.backbone.model.image_newline[None]])
    assert video.shape == (3 + 25 + 1, 64)
    torch.testing.assert_close(video, expected, rtol=0, atol=0)
    assert "suffix" not in llm.adapter.state_dict() and not any(p is llm.adapter.suffix for p in llm.adapter.parameters())


@pytest.fixture(scope="session")
def onevision_cache(tiny_llava_onevision, synthetic_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("onevision-cache") / "cache.h5"
    invoke(extract_main, synthetic_videos, out, "--model", tiny_llava_onevision, "--num-frames", 4,
           "--decode-workers", 1, *CPU)
    return out


def invoke(command, *args, exit_code=0):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == exit_code, result.stderr[-2000:]
    return result


def test_extract_train_predict_ask_through_the_clis(onevision_cache, tiny_llava_onevision, qa_file,
                                                     synthetic_videos, tmp_path):
    cache = open_cache(onevision_cache)
    info = cache.info
    assert info["family"] == "llava_onevision" and info["vision"]["vision_model_type"] == "siglip_vision_model"
    assert info["vision"]["tiles"] == "base tile only" and tuple(info["image_size"]) == (72, 72)
    assert cache["order_0000"].shape == (4, 25, 32) and cache["order_0000"].dtype == np.float16

    run = tmp_path / "run"
    trained = invoke(train_main, onevision_cache, "--annotations", qa_file, "--model", tiny_llava_onevision,
                     "--output", run, "--max-steps", 2, "--batch-size", 4, "--lr", 3e-3, "--num-workers", 0, *CPU)
    projector = (32 * 64 + 64) + (64 * 64 + 64)  # linear_1 (D -> K) and linear_2 (K -> K)
    assert f"trainable parameters: {2 * projector:,}" in trained.stderr  # g_z and its copy g_t
    assert {k.split(".")[0] for k in load_file(run / "adapter.safetensors")} == {"spatial_proj", "temporal_proj"}

    rows = json.loads(qa_file.read_text()) + [{"video_id": "order_0000", "q": CHINESE, "a": "红色"}]
    questions = tmp_path / "qa_zh.json"
    questions.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    invoke(eval_main, "predict", "--model-dir", run, "--cache", onevision_cache, "--questions", questions,
           "--output", preds, "--batch-size", 4, "--max-new-tokens", 4, *CPU)
    records = read_predictions(preds)
    assert len(records) == len(rows) and all(isinstance(r["pred"], str) for r in records.values())
    assert CHINESE in preds.read_text(encoding="utf-8")

    asked = invoke(eval_main, "ask", run, synthetic_videos / "order_0000.mp4", CHINESE, "--max-new-tokens", 3, *CPU)
    assert asked.stdout.endswith("\n")
