"""Gemma 3 on a tiny replica: the oracle against Gemma3ForConditionalGeneration (logits and
greedy generation, with its bidirectional image block), the cache's pooled-then-mean identity
through the real projector, the processor's preprocessing, and extract -> train -> predict / ask."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, Gemma3ForConditionalGeneration

from redvillm import open_cache
from redvillm.batching import VideoSample, collate
from redvillm.data.tiny_gemma3 import TinyGemma3Config, build_tiny_gemma3
from redvillm.data.tiny_gemma3 import main as build_main
from redvillm.errors import UserError
from redvillm.evaluate.cli import main as eval_main
from redvillm.evaluate.predict import read_predictions
from redvillm.extract.cli import main as extract_main
from redvillm.families.gemma3 import pool_patches
from redvillm.families.registry import load_family
from redvillm.frames import normalize, resize_and_crop
from redvillm.model_io import build_video_llm
from redvillm.train.cli import main as train_main
from redvillm.video_llm import VideoAdapter

QUESTIONS = ["Which colour appeared first, red or blue?", "这个视频里的方块往哪个方向移动？"]
CHINESE = "哪个颜色先出现？"
CPU = ["--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory):
    """A random-weight Gemma3ForConditionalGeneration saved with save_pretrained (64 px, 8 x 8 patches -> 16 tokens)."""
    return build_tiny_gemma3(tmp_path_factory.mktemp("models") / "tiny-gemma3")


@pytest.fixture(scope="session")
def gemma3_cache(tiny_gemma3, synthetic_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("gemma3-cache") / "cache.h5"
    invoke(extract_main, synthetic_videos, out, "--model", tiny_gemma3, "--num-frames", 4, "--decode-workers", 1, *CPU)
    return out


def invoke(command, *args, exit_code=0):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == exit_code, result.stderr[-2000:]
    return result


def _reference_inputs(model_dir, question, seed=0):
    processor = AutoProcessor.from_pretrained(model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    frame = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    # The template writes <bos> itself, as processor.apply_chat_template(tokenize=True) assumes.
    return processor(images=frame, text=prompt, add_special_tokens=False, return_tensors="pt")


def _one_frame_batch(model_dir, question, inputs, padding_side="right"):
    family = load_family(str(model_dir))
    encoder = family.load_frame_encoder(torch.device("cpu"), torch.float32)
    llm = build_video_llm(str(model_dir), "temporal", "none", torch.device("cpu"), torch.float32)
    with torch.no_grad():
        temporal, spatial = family.pool(encoder(inputs["pixel_values"]))  # (T=1, M, D): a one-frame video
    sample = VideoSample(llm.chat.encode(question), temporal, spatial)
    batch = collate([sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0, padding_side=padding_side,
                    with_labels=False)
    return llm, batch


@pytest.mark.parametrize("question", QUESTIONS)
def test_one_frame_equals_backbone_image_forward(tiny_gemma3, question):
    inputs = _reference_inputs(tiny_gemma3, question)
    reference = Gemma3ForConditionalGeneration.from_pretrained(tiny_gemma3).eval()
    with torch.no_grad():
        expected = reference(**inputs).logits
    llm, batch = _one_frame_batch(tiny_gemma3, question, inputs)
    with torch.no_grad():
        ours = llm.logits(batch)
    assert torch.equal(batch.input_ids, inputs["input_ids"])  # same prompt, same splice position
    assert torch.equal(llm.backbone_inputs(batch)["token_type_ids"], inputs["token_type_ids"])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_one_frame_generation_equals_backbone_generate(tiny_gemma3):
    """Greedy generation from our embeddings and token_type_ids: the backbone's tokens and the
    logits of every step (the first one reads the bidirectional image block)."""
    inputs = _reference_inputs(tiny_gemma3, QUESTIONS[1], seed=3)
    reference = Gemma3ForConditionalGeneration.from_pretrained(tiny_gemma3).eval()
    llm, batch = _one_frame_batch(tiny_gemma3, QUESTIONS[1], inputs, padding_side="left")
    steps = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        expected = reference.generate(**inputs, eos_token_id=llm.chat.eos_id, **steps)
    seen = {}
    generate = llm.backbone.generate

    def spy(**kwargs):  # VideoLLM.generate's own call, with the step logits kept
        out = generate(**kwargs, output_logits=True, return_dict_in_generate=True)
        seen["logits"] = out.logits
        return out.sequences

    llm.backbone.generate = spy
    expected_text = llm.chat.decode(expected.sequences[0, inputs["input_ids"].shape[1]:])
    assert llm.generate(batch, max_new_tokens=6) == [expected_text]
    assert len(seen["logits"]) == len(expected.logits)
    for ours, theirs in zip(seen["logits"], expected.logits):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_the_bidirectional_image_block_matters(tiny_gemma3):
    """Without token_type_ids the video tokens would attend causally: the logits must change."""
    inputs = _reference_inputs(tiny_gemma3, QUESTIONS[0])
    llm, batch = _one_frame_batch(tiny_gemma3, QUESTIONS[0], inputs)
    with torch.no_grad():
        ours = llm.logits(batch)
        llm.backbone_inputs = lambda b: {}
        causal = llm.logits(batch)
    assert (ours - causal).abs().max() > 1e-3


def test_pooled_then_mean_equals_mean_then_pooled(tiny_gemma3):
    """What the cache keeps is exact: pooling commutes with the mean over time, and the mean over
    pooled tokens is the mean over all patches; the real projector on the time-mean patches
    gives g_z on the time-mean pooled tokens."""
    model = Gemma3ForConditionalGeneration.from_pretrained(tiny_gemma3).eval()
    projector = model.model.multi_modal_projector
    family = load_family(str(tiny_gemma3))
    patches = torch.randn(5, 64, 64, dtype=torch.float64)  # (T, P*P, D) as the tower gives them
    pooled = pool_patches(projector, patches)  # (T, M, D): what the cache holds
    assert pooled.shape == (5, 16, 64)
    temporal, spatial = family.pool(pooled)
    torch.testing.assert_close(spatial.double(), pool_patches(projector, patches.mean(0, keepdim=True))[0])
    torch.testing.assert_close(temporal.double(), patches.mean(dim=1))
    g_z = family.projector(model)
    with torch.no_grad():
        expected = projector(patches.mean(0, keepdim=True).float())[0]  # (M, K): the whole real projector
        torch.testing.assert_close(g_z(spatial), expected, rtol=1e-5, atol=1e-6)


def test_temporal_module_variants_differ_from_the_copy(tiny_gemma3):
    """The projector's split-off form still has what "random" resets and what "copy+mlp" extends."""
    model = Gemma3ForConditionalGeneration.from_pretrained(tiny_gemma3).eval()
    g_z = load_family(str(tiny_gemma3)).projector(model)
    copied = VideoAdapter(g_z, "both", "copy").temporal_proj
    random = VideoAdapter(g_z, "both", "random").temporal_proj
    assert torch.equal(copied.proj.weight, g_z.proj.weight)
    assert not torch.equal(random.proj.weight, g_z.proj.weight) and not random.norm.weight.any()
    extended = VideoAdapter(g_z, "both", "copy+mlp").temporal_proj
    assert extended(torch.randn(3, 64)).shape == (3, 64)


@pytest.mark.parametrize("hw", [(240, 320), (320, 180)])
def test_frames_match_the_image_processor(tiny_gemma3, hw):
    """Square resize (aspect not kept), bilinear, mean/std 0.5; the processor loads without torchvision."""
    processor = AutoImageProcessor.from_pretrained(tiny_gemma3)
    spec = load_family(str(tiny_gemma3)).frame_preprocess()
    assert spec.fixed_output_hw() == (64, 64) and spec.resample == "bilinear"
    frames = np.random.default_rng(1).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    reference = processor([Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    mine = normalize(resize_and_crop(torch.from_numpy(frames), spec), spec, torch.float32)
    assert mine.shape == reference.shape == (2, 3, 64, 64)
    level = 1 / 255 / min(spec.std)
    assert (mine - reference).abs().max() <= 1.01 * level  # Pillow's fixed-point filter: a tie may round apart


def test_pan_and_scan_is_refused(tiny_gemma3, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_gemma3, tmp_path / "pan-and-scan")
    config = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**config, "do_pan_and_scan": True}))
    with pytest.raises(UserError) as err:
        load_family(str(copy)).frame_preprocess()
    assert "\n" not in str(err.value) and "do_pan_and_scan" in str(err.value)


def test_replica_rebuilds_byte_identical(tiny_gemma3, tmp_path, capsys):
    build_main([str(tmp_path / "again")])  # python -m redvillm.data.tiny_gemma3 OUT_DIR
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json", "chat_template.jinja"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_gemma3 / name).read_bytes(), name
    assert "model.safetensors" in capsys.readouterr().out


def test_extract_train_predict_ask_through_the_clis(gemma3_cache, tiny_gemma3, qa_file, synthetic_videos, tmp_path):
    replica, config = TinyGemma3Config(), AutoConfig.from_pretrained(tiny_gemma3)
    cache = open_cache(gemma3_cache)
    info = cache.info
    assert info["family"] == "gemma3" and info["vision"]["mm_tokens_per_image"] == replica.mm_tokens_per_image
    assert (info["num_patches"], info["hidden_size"]) == (16, config.vision_config.hidden_size)
    assert cache["order_0000"].shape == (4, 16, 64) and cache["order_0000"].dtype == np.float16

    run = tmp_path / "run"
    trained = invoke(train_main, gemma3_cache, "--annotations", qa_file, "--model", tiny_gemma3, "--output", run,
                     "--max-steps", 2, "--batch-size", 4, "--lr", 3e-3, "--num-workers", 0, *CPU)
    soft_embedding = 64 + 64 * 64  # norm weight (D) and projection (D x K), D = K = 64
    assert f"trainable parameters: {2 * soft_embedding:,}" in trained.stderr  # g_z and its copy g_t
    saved = load_file(run / "adapter.safetensors")
    assert {k.split(".")[0] for k in saved} == {"spatial_proj", "temporal_proj"}
    meta = json.loads((run / "redvillm_config.json").read_text())
    assert (meta["family"], meta["num_patches"], meta["hidden_size"]) == ("gemma3", 16, 64)

    rows = json.loads(qa_file.read_text()) + [{"video_id": "order_0000", "q": CHINESE, "a": "红色"}]
    questions = tmp_path / "qa_zh.json"
    questions.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    invoke(eval_main, "predict", "--model-dir", run, "--cache", gemma3_cache, "--questions", questions,
           "--output", preds, "--batch-size", 4, "--max-new-tokens", 4, *CPU)
    records = read_predictions(preds)
    assert len(records) == len(rows) and all(isinstance(r["pred"], str) for r in records.values())
    assert CHINESE in preds.read_text(encoding="utf-8")  # written as text, not \\u escapes

    asked = invoke(eval_main, "ask", run, synthetic_videos / "order_0000.mp4", CHINESE, "--max-new-tokens", 3, *CPU)
    assert asked.stdout.endswith("\n")


def test_chinese_answers_end_at_end_of_turn(tiny_gemma3):
    chat = load_family(str(tiny_gemma3)).chat_format()
    encoded = chat.encode(CHINESE, "红色的方块先出现。")
    tokenizer = chat.tokenizer
    assert tokenizer.convert_ids_to_tokens(encoded.answer_ids[-1]) == "<end_of_turn>"
    assert chat.decode(encoded.answer_ids) == "红色的方块先出现。"
    prompt = tokenizer.decode(encoded.prompt_ids)
    assert prompt == ("<bos><start_of_turn>user\n\n\n<start_of_image><image_soft_token><end_of_image>\n\n"
                      f"{CHINESE}<end_of_turn>\n<start_of_turn>model\n")
