"""DeepSeek-VL on a tiny replica: the oracle against DeepseekVLForConditionalGeneration, the
processor's resize-then-pad preprocessing, and extract -> train -> predict / ask through the CLIs."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, DeepseekVLForConditionalGeneration

from redvillm import open_cache
from redvillm.batching import VideoSample, collate
from redvillm.data.tiny_deepseek_vl import TinyDeepseekVLConfig, build_tiny_deepseek_vl
from redvillm.data.tiny_deepseek_vl import main as build_main
from redvillm.errors import UserError
from redvillm.evaluate.cli import main as eval_main
from redvillm.evaluate.predict import read_predictions
from redvillm.extract.cli import main as extract_main
from redvillm.families.registry import load_family
from redvillm.frames import normalize, resize_and_crop
from redvillm.model_io import build_video_llm
from redvillm.train.cli import main as train_main

QUESTIONS = ["Which colour appeared first, red or blue?", "这个视频里的方块往哪个方向移动？"]
CHINESE = "哪个颜色先出现？"
CPU = ["--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_deepseek_vl(tmp_path_factory):
    """A random-weight DeepseekVLForConditionalGeneration saved with save_pretrained (64 px, patch 16)."""
    return build_tiny_deepseek_vl(tmp_path_factory.mktemp("models") / "tiny-deepseek-vl")


@pytest.fixture(scope="session")
def deepseek_cache(tiny_deepseek_vl, synthetic_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("deepseek-cache") / "cache.h5"
    invoke(extract_main, synthetic_videos, out, "--model", tiny_deepseek_vl, "--num-frames", 4,
           "--decode-workers", 1, *CPU)
    return out


def invoke(command, *args, exit_code=0):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == exit_code, result.stderr[-2000:]
    return result


@pytest.mark.parametrize("question", QUESTIONS)
def test_one_frame_equals_backbone_image_forward(tiny_deepseek_vl, question):
    processor = AutoProcessor.from_pretrained(tiny_deepseek_vl)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    inputs = processor(images=frame, text=prompt, return_tensors="pt")
    reference = DeepseekVLForConditionalGeneration.from_pretrained(tiny_deepseek_vl).eval()
    with torch.no_grad():
        expected = reference(**inputs).logits

    family = load_family(str(tiny_deepseek_vl))
    encoder = family.load_frame_encoder(torch.device("cpu"), torch.float32)
    llm = build_video_llm(str(tiny_deepseek_vl), "temporal", "none", torch.device("cpu"), torch.float32)
    with torch.no_grad():
        frame_tokens = encoder(inputs["pixel_values"])  # (T=1, N, D): a one-frame video
        temporal, spatial = family.pool(frame_tokens)
        sample = VideoSample(llm.chat.encode(question), temporal, spatial)
        batch = collate([sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0, with_labels=False)
        ours = llm.logits(batch)
    assert torch.equal(batch.input_ids, inputs["input_ids"])  # same prompt, same splice position
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(240, 320), (320, 180)])
def test_frames_match_the_image_processor(tiny_deepseek_vl, hw):
    """Longest side resized, then padded to square with the mean colour (127 for SigLIP's 0.5)."""
    processor = AutoImageProcessor.from_pretrained(tiny_deepseek_vl)
    spec = load_family(str(tiny_deepseek_vl)).frame_preprocess()
    assert spec.fixed_output_hw() == (64, 64)
    frames = np.random.default_rng(1).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    reference = processor([Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    geometry = resize_and_crop(torch.from_numpy(frames), spec)  # (F, 3, 64, 64) uint8
    mine = normalize(geometry, spec, torch.float32)
    assert mine.shape == reference.shape == (2, 3, 64, 64)
    level = 1 / 255 / min(spec.std)
    assert (mine - reference).abs().max() <= 1.01 * level  # Pillow's fixed-point filter: a tie may round apart
    short = round(min(hw) * 64 / max(hw))  # 48 and 36: pad bands of 8 and 14
    band = geometry[..., : (64 - short) // 2, :] if hw[0] < hw[1] else geometry[..., : (64 - short) // 2]
    assert band.numel() and (band == 127).all()


def test_replica_rebuilds_byte_identical(tiny_deepseek_vl, tmp_path, capsys):
    build_main([str(tmp_path / "again")])  # python -m redvillm.data.tiny_deepseek_vl OUT_DIR
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json", "chat_template.jinja"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_deepseek_vl / name).read_bytes(), name
    assert "model.safetensors" in capsys.readouterr().out


def test_fixed_resolution_refuses_an_image_size(tiny_deepseek_vl):
    with pytest.raises(UserError) as err:
        load_family(str(tiny_deepseek_vl), image_size=96)
    assert "\n" not in str(err.value) and "--image-size" in str(err.value)


def test_extract_train_predict_ask_through_the_clis(deepseek_cache, tiny_deepseek_vl, qa_file, synthetic_videos,
                                                     tmp_path):
    replica, config = TinyDeepseekVLConfig(), AutoConfig.from_pretrained(tiny_deepseek_vl)
    cache = open_cache(deepseek_cache)
    info = cache.info
    assert info["family"] == "deepseek_vl" and info["vision"]["vision_model_type"] == "siglip_vision_model"
    assert (info["num_patches"], info["hidden_size"]) == (replica.num_image_tokens, config.vision_config.hidden_size)
    assert tuple(info["image_size"]) == (64, 64) and len(cache) == 8
    assert cache["order_0000"].shape == (4, 16, 64) and cache["order_0000"].dtype == np.float16

    run = tmp_path / "run"
    trained = invoke(train_main, deepseek_cache, "--annotations", qa_file, "--model", tiny_deepseek_vl, "--output", run,
                     "--max-steps", 2, "--batch-size", 4, "--lr", 3e-3, "--num-workers", 0, *CPU)
    aligner = 2 * (64 * 64 + 64)  # linear1 (D -> K) and linear2 (K -> K), D = K = 64
    assert f"trainable parameters: {2 * aligner:,}" in trained.stderr  # g_z and its copy g_t
    saved = load_file(run / "adapter.safetensors")
    assert {k.split(".")[0] for k in saved} == {"spatial_proj", "temporal_proj"}
    meta = json.loads((run / "redvillm_config.json").read_text())
    assert (meta["family"], meta["num_patches"], meta["hidden_size"]) == ("deepseek_vl", 16, 64)

    rows = json.loads(qa_file.read_text()) + [{"video_id": "order_0000", "q": CHINESE, "a": "红色"}]
    questions = tmp_path / "qa_zh.json"
    questions.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    invoke(eval_main, "predict", "--model-dir", run, "--cache", deepseek_cache, "--questions", questions,
           "--output", preds, "--batch-size", 4, "--max-new-tokens", 4, *CPU)
    records = read_predictions(preds)
    assert len(records) == len(rows) and all(isinstance(r["pred"], str) for r in records.values())
    assert CHINESE in preds.read_text(encoding="utf-8")  # written as text, not \\u escapes

    asked = invoke(eval_main, "ask", run, synthetic_videos / "order_0000.mp4", CHINESE, "--max-new-tokens", 3, *CPU)
    assert asked.stdout.endswith("\n")


def test_a_deepseek_cache_is_refused_for_llava(deepseek_cache, qa_file, tiny_llava, tmp_path):
    result = invoke(train_main, deepseek_cache, "--annotations", qa_file, "--model", tiny_llava, "--output",
                    tmp_path / "run", "--max-steps", 1, "--num-workers", 0, *CPU, exit_code=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # the progress display leaves a blank one
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "deepseek_vl" in lines[0] and "re-extract" in lines[0]
