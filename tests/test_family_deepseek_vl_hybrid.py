"""DeepSeek-VL 7B (deepseek_vl_hybrid) on a tiny replica: the oracle against
DeepseekVLHybridForConditionalGeneration, both resolutions of its image processor, and
extract -> train -> predict / ask through the CLIs."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, DeepseekVLHybridForConditionalGeneration

from redvillm import open_cache
from redvillm.batching import VideoSample, collate
from redvillm.data.tiny_deepseek_vl import build_tiny_deepseek_vl
from redvillm.data.tiny_deepseek_vl_hybrid import TinyDeepseekVLHybridConfig, build_tiny_deepseek_vl_hybrid
from redvillm.data.tiny_deepseek_vl_hybrid import main as build_main
from redvillm.errors import UserError
from redvillm.evaluate.cli import main as eval_main
from redvillm.evaluate.predict import read_predictions
from redvillm.extract.cli import main as extract_main
from redvillm.families import deepseek_vl_hybrid as adapter
from redvillm.families.registry import load_family
from redvillm.frames import normalize, resize_and_crop
from redvillm.model_io import build_video_llm
from redvillm.train.cli import main as train_main

QUESTIONS = ["Which colour appeared first, red or blue?", "这个视频里的方块往哪个方向移动？"]
CHINESE = "哪个颜色先出现？"
CPU = ["--device", "cpu"]
REPLICA = TinyDeepseekVLHybridConfig()
D_LOW, D_HIGH = REPLICA.vision_hidden, 4 * REPLICA.high_res_output_channels


@pytest.fixture(scope="session")
def tiny_hybrid(tmp_path_factory):
    """A random-weight DeepseekVLHybridForConditionalGeneration saved with save_pretrained (96 / 256 px)."""
    return build_tiny_deepseek_vl_hybrid(tmp_path_factory.mktemp("models") / "tiny-deepseek-vl-hybrid")


@pytest.fixture(scope="session")
def hybrid_cache(tiny_hybrid, synthetic_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid-cache") / "cache.h5"
    invoke(extract_main, synthetic_videos, out, "--model", tiny_hybrid, "--num-frames", 4, "--decode-workers", 1, *CPU)
    return out


def invoke(command, *args, exit_code=0):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == exit_code, result.stderr[-2000:]
    return result


def levels_of(pixel_values: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised pixel values back to uint8 levels (exact in float64)."""
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return ((pixel_values.double() * std + mean) * 255).round()


@pytest.mark.parametrize("question", QUESTIONS)
def test_one_frame_equals_backbone_image_forward(tiny_hybrid, question):
    processor = AutoProcessor.from_pretrained(tiny_hybrid)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    inputs = processor(images=frame, text=prompt, return_tensors="pt")
    reference = DeepseekVLHybridForConditionalGeneration.from_pretrained(tiny_hybrid).eval()
    assert reference.model.high_res_vision_alpha.item() != 0  # SAM's global-layer path takes part
    with torch.no_grad():
        expected = reference(**inputs).logits

    family = load_family(str(tiny_hybrid))
    encoder = family.load_frame_encoder(torch.device("cpu"), torch.float32)
    llm = build_video_llm(str(tiny_hybrid), "temporal", "none", torch.device("cpu"), torch.float32)
    with torch.no_grad():
        # The processor's own pixel values for both towers (our resizing is tested below).
        frame_tokens = encoder.towers(inputs["pixel_values"], inputs["high_res_pixel_values"])  # (T=1, N, D)
        temporal, spatial = family.pool(frame_tokens)
        sample = VideoSample(llm.chat.encode(question), temporal, spatial)
        batch = collate([sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0, with_labels=False)
        ours = llm.logits(batch)
    assert frame_tokens.shape == (1, REPLICA.num_image_tokens, D_LOW + D_HIGH)
    assert torch.equal(batch.input_ids, inputs["input_ids"])  # same prompt, same splice position
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(240, 320), (320, 180)])
def test_both_resolutions_match_the_image_processor(tiny_hybrid, hw):
    """High: longest side resized, padded with the CLIP mean colour; low: resized from that padded image."""
    processor = AutoImageProcessor.from_pretrained(tiny_hybrid)  # loads without torchvision (PIL backend)
    family = load_family(str(tiny_hybrid))
    spec = family.frame_preprocess()
    encoder = family.load_frame_encoder(torch.device("cpu"), torch.float32)
    high_size, low_size = REPLICA.high_res_image_size, REPLICA.image_size
    assert spec.fixed_output_hw() == (high_size, high_size)
    frames = np.random.default_rng(1).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    reference = processor([Image.fromarray(f) for f in frames], return_tensors="pt")

    geometry = resize_and_crop(torch.from_numpy(frames), spec)  # (F, 3, 256, 256) uint8
    levels = normalize(geometry, spec, torch.float32)  # what the encoder receives: the levels themselves
    assert torch.equal(levels, geometry.float())
    low, high = encoder.pixel_values(levels)
    assert low.shape == reference["pixel_values"].shape == (2, 3, low_size, low_size)
    assert high.shape == reference["high_res_pixel_values"].shape == (2, 3, high_size, high_size)
    # Pillow's fixed-point filter: a pixel may round one level apart (here a few in a thousand).
    high_std = torch.tensor(processor.high_res_image_std).view(1, 3, 1, 1)
    low_std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    high_gap = ((high - reference["high_res_pixel_values"]) * high_std * 255).abs()
    low_gap = ((low - reference["pixel_values"]) * low_std * 255).abs()
    assert high_gap.max() <= 1.01 and (high_gap > 0.5).float().mean() < 0.002
    assert low_gap.max() <= 1.01 and (low_gap > 0.5).float().mean() < 0.02
    short = round(min(hw) * high_size / max(hw))  # 192 and 144: pad bands of 32 and 56
    band = geometry[..., : (high_size - short) // 2, :] if hw[0] < hw[1] else geometry[..., : (high_size - short) // 2]
    fill = torch.tensor([int(m * 255) for m in processor.high_res_image_mean], dtype=torch.uint8).view(1, 3, 1, 1)
    assert band.numel() and (band == fill).all()  # (122, 116, 104), not SigLIP's 127 grey


def test_replica_rebuilds_byte_identical(tiny_hybrid, tmp_path, capsys):
    build_main([str(tmp_path / "again")])  # python -m redvillm.data.tiny_deepseek_vl_hybrid OUT_DIR
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json", "chat_template.jinja"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_hybrid / name).read_bytes(), name
    assert "model.safetensors" in capsys.readouterr().out


def test_fixed_resolution_refuses_an_image_size(tiny_hybrid):
    with pytest.raises(UserError) as err:
        load_family(str(tiny_hybrid), image_size=96)
    assert "\n" not in str(err.value) and "--image-size" in str(err.value)


def test_extract_train_predict_ask_through_the_clis(hybrid_cache, tiny_hybrid, qa_file, synthetic_videos, tmp_path):
    config = AutoConfig.from_pretrained(tiny_hybrid)
    cache = open_cache(hybrid_cache)
    info = cache.info
    assert info["family"] == "deepseek_vl_hybrid"
    assert info["vision"]["feature_split"] == [D_LOW, D_HIGH] and info["vision"]["low_res_image_size"] == 96
    assert (info["num_patches"], info["hidden_size"]) == (REPLICA.num_image_tokens, D_LOW + D_HIGH)
    assert tuple(info["image_size"]) == (256, 256) and len(cache) == 8
    assert cache["order_0000"].shape == (4, 36, 128) and cache["order_0000"].dtype == np.float16

    run = tmp_path / "run"
    trained = invoke(train_main, hybrid_cache, "--annotations", qa_file, "--model", tiny_hybrid, "--output", run,
                     "--max-steps", 2, "--batch-size", 4, "--lr", 3e-3, "--num-workers", 0, *CPU)
    k = config.text_config.hidden_size
    aligner = 2 * (64 * k // 2 + k // 2) + (k * k + k)  # vision_proj, high_res_vision_proj (-> K/2 each), proj
    assert f"trainable parameters: {2 * aligner:,}" in trained.stderr  # g_z and its copy g_t
    saved = load_file(run / "adapter.safetensors")
    assert {k.split(".")[0] for k in saved} == {"spatial_proj", "temporal_proj"}
    assert "temporal_proj.aligner.high_res_vision_proj.weight" in saved
    meta = json.loads((run / "redvillm_config.json").read_text())
    assert (meta["family"], meta["num_patches"], meta["hidden_size"]) == ("deepseek_vl_hybrid", 36, 128)

    rows = json.loads(qa_file.read_text()) + [{"video_id": "order_0000", "q": CHINESE, "a": "红色"}]
    questions = tmp_path / "qa_zh.json"
    questions.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    invoke(eval_main, "predict", "--model-dir", run, "--cache", hybrid_cache, "--questions", questions,
           "--output", preds, "--batch-size", 4, "--max-new-tokens", 4, *CPU)
    records = read_predictions(preds)
    assert len(records) == len(rows) and all(isinstance(r["pred"], str) for r in records.values())
    assert CHINESE in preds.read_text(encoding="utf-8")  # written as text, not \\u escapes

    asked = invoke(eval_main, "ask", run, synthetic_videos / "order_0000.mp4", CHINESE, "--max-new-tokens", 3, *CPU)
    assert asked.stdout.endswith("\n")


def test_a_hybrid_cache_is_refused_for_deepseek_vl_1_3b(hybrid_cache, qa_file, tmp_path):
    """The sibling family (same tokenizer and chat format, one tower) must not train on these tokens."""
    small = build_tiny_deepseek_vl(tmp_path / "tiny-deepseek-vl")
    result = invoke(train_main, hybrid_cache, "--annotations", qa_file, "--model", small, "--output",
                    tmp_path / "run", "--max-steps", 1, "--num-workers", 0, *CPU, exit_code=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # the progress display leaves a blank one
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "deepseek_vl_hybrid" in lines[0] and "re-extract" in lines[0]


def test_frames_reach_the_encoder_exactly_in_bfloat16(tiny_hybrid):
    """Levels 0..255 are exact in bfloat16, so a GPU run sees the same pixels as a float32 one."""
    family = load_family(str(tiny_hybrid))
    spec = family.frame_preprocess()
    frames = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (1, 200, 300, 3), dtype=np.uint8))
    geometry = resize_and_crop(frames, spec)

    def pixels(dtype):
        return family.load_frame_encoder(torch.device("cpu"), dtype).pixel_values(normalize(geometry, spec, dtype))

    for ours, reference in zip(pixels(torch.bfloat16), pixels(torch.float32)):  # (low, high)
        assert ours.dtype == torch.bfloat16 and torch.equal(ours, reference.to(torch.bfloat16))


def test_towers_load_alone_from_a_transformers_4_layout(tiny_hybrid, tmp_path, monkeypatch):
    """Checkpoints converted with transformers 4 nest SigLIP under "vision_model." twice; stage one still
    reads only the towers' tensors (never the whole model) and gets the same features."""
    old = tmp_path / "old-layout"
    shutil.copytree(tiny_hybrid, old)
    state = load_file(old / "model.safetensors")
    prefix = "model.vision_model."
    save_file({k.replace(prefix, prefix + "vision_model.", 1) if k.startswith(prefix) else k: v for k, v in state.items()},
              old / "model.safetensors", metadata={"format": "pt"})
    frames = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, 3, 256, 256))).float()
    expected = load_family(str(tiny_hybrid)).load_frame_encoder(torch.device("cpu"), torch.float32)(frames)
    monkeypatch.setattr(adapter.DeepseekVLHybridForConditionalGeneration, "from_pretrained", None)  # no full load
    encoder = load_family(str(old)).load_frame_encoder(torch.device("cpu"), torch.float32)
    assert torch.equal(encoder(frames), expected)


@pytest.mark.parametrize("change", [{"do_pad": False}, {"high_res_size": {"height": 256, "width": 192}}])
def test_a_processor_without_a_fixed_frame_size_is_refused(tiny_hybrid, tmp_path, change):
    model = tmp_path / "changed"
    shutil.copytree(tiny_hybrid, model)
    for name in ("preprocessor_config.json", "processor_config.json"):
        config = json.loads((model / name).read_text())
        (config["image_processor"] if "image_processor" in config else config).update(change)
        (model / name).write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        load_family(str(model))
    assert "\n" not in str(err.value) and str(model) in str(err.value) and next(iter(change)) in str(err.value)
