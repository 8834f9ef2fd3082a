"""Qwen2-VL and Qwen2.5-VL: our path against the backbone's own image forward, preprocessing
against the reference image processor, 3-D rope positions, and extract -> train -> eval in Chinese.

transformers' Qwen processor cannot be built without torchvision (its video half), so the
reference inputs are made the way Qwen2VLProcessor makes them: the image processor's pixel
values and grid, and the chat template's <|image_pad|> repeated grid.prod() / 4 times.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from redvillm import open_cache
from redvillm.batching import VideoSample, collate
from redvillm.errors import UserError
from redvillm.families.qwen2_vl import patchify
from redvillm.families.registry import load_family
from redvillm.frames import normalize, resize_and_crop
from redvillm.model_io import build_video_llm

CPU = torch.device("cpu")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
QUESTIONS = ["Which colour appeared first, red or blue?", "这个视频里的方块往哪个方向移动？"]
VARIANTS = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="session", params=VARIANTS)
def tiny_qwen(request, tmp_path_factory):
    from redvillm.data.tiny_qwen2_vl import TinyQwen2VLConfig, build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("models") / request.param,
                               TinyQwen2VLConfig(variant=request.param))


def reference_inputs(model_dir, question: str, image: np.ndarray) -> dict:
    """What Qwen2VLProcessor(images=image, text=prompt) gives, built from its parts."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pixels = AutoImageProcessor.from_pretrained(model_dir)(images=Image.fromarray(image), return_tensors="pt")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    count = int(pixels["image_grid_thw"].prod()) // 4
    text = tokenizer(prompt.replace("<|image_pad|>", "<|image_pad|>" * count), return_tensors="pt")
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return dict(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"],
                mm_token_type_ids=(text["input_ids"] == image_id).int())


def our_pixels(family, image: np.ndarray) -> torch.Tensor:
    spec = family.frame_preprocess()
    return normalize(resize_and_crop(torch.from_numpy(image)[None], spec), spec, torch.float32)  # (1, 3, S, S)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("question", QUESTIONS)
def test_one_frame_equals_backbone_image_forward(tiny_qwen, question):
    image = random_image(224, 224)
    inputs = reference_inputs(tiny_qwen, question, image)
    reference = AutoModelForImageTextToText.from_pretrained(tiny_qwen).eval()
    with torch.no_grad():
        expected = reference(**inputs).logits
    expected_answer = reference.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:]

    family = load_family(str(tiny_qwen))
    encoder = family.load_frame_encoder(CPU, torch.float32)
    llm = build_video_llm(str(tiny_qwen), "temporal", "none", CPU, torch.float32)
    with torch.no_grad():
        temporal, spatial = family.pool(encoder(our_pixels(family, image)))  # a one-frame video
        sample = VideoSample(llm.chat.encode(question), temporal, spatial)
        batch = collate([sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0, with_labels=False)
        ours = llm.logits(batch)
    assert torch.equal(batch.input_ids, inputs["input_ids"])  # same prompt, same splice position
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # generate goes through the backbone's own 3-D rope bookkeeping (rope deltas) step by step
    llm.chat.decode = lambda row: row.tolist()
    assert llm.generate(batch, max_new_tokens=6)[0] == expected_answer.tolist()


def test_patchify_and_preprocessing_match_the_reference_image_processor(tiny_qwen):
    family = load_family(str(tiny_qwen))
    square = random_image(224, 224, seed=1)
    reference = AutoImageProcessor.from_pretrained(tiny_qwen)(images=Image.fromarray(square), return_tensors="pt")
    ours = patchify(our_pixels(family, square), 14, 2, 2)
    torch.testing.assert_close(ours, reference["pixel_values"], rtol=0, atol=1e-6)
    # A 4:3 frame is squashed to the square size (fixed N for every video); the reference
    # processor keeps the aspect ratio, so compare against it on the frame PIL squashed.
    frame = random_image(240, 320, seed=2)
    squashed = np.asarray(Image.fromarray(frame).resize((224, 224), Image.BICUBIC))
    expected = AutoImageProcessor.from_pretrained(tiny_qwen)(images=Image.fromarray(squashed), return_tensors="pt")
    one_level = 1 / 255 / min(family.frame_preprocess().std)
    difference = (patchify(our_pixels(family, frame), 14, 2, 2) - expected["pixel_values"]).abs()
    assert difference.max() <= one_level + 1e-5 and (difference > 1e-5).float().mean() < 0.01


def test_cached_tokens_are_in_the_order_the_merger_reads(tiny_qwen):
    """Qwen2.5-VL's tower runs in window order; the cache must hold the spatial (merge-group) order."""
    family = load_family(str(tiny_qwen))
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen).eval()
    encoder = family.load_frame_encoder(CPU, torch.float32)
    pixels = our_pixels(family, random_image(224, 224, seed=3))
    with torch.no_grad():
        tokens = encoder(torch.cat([pixels, pixels.flip(-1)]))  # (2, N, D): two frames at once
        merged = torch.cat(model.model.get_image_features(
            patchify(torch.cat([pixels, pixels.flip(-1)]), 14, 2, 2),
            torch.tensor([[1, 16, 16]] * 2)).pooler_output)  # (2 * N / 4, K)
        ours = model.model.visual.merger(tokens.reshape(-1, tokens.shape[-1]))
        raw = model.model.visual(patchify(pixels, 14, 2, 2), grid_thw=torch.tensor([[1, 16, 16]])).last_hidden_state
    assert tokens.shape == (2, 256, model.config.vision_config.hidden_size if family.name == "qwen2_5_vl"
                            else model.config.vision_config.embed_dim)
    torch.testing.assert_close(ours, merged, rtol=1e-5, atol=1e-5)
    if family.name == "qwen2_5_vl":  # the tower's raw output really is permuted: the test above can fail
        assert not torch.allclose(raw, tokens[0], atol=1e-3)


def test_pooling_keeps_merge_groups(tiny_qwen):
    family = load_family(str(tiny_qwen))
    tokens = torch.randn(5, 16, 3)  # (T, N, D): a 4x4 grid of 3-wide tokens, 4 merge groups
    temporal, spatial = family.pool(tokens)
    groups = tokens.reshape(5, 4, 12)  # (T, G, 4D): 4 consecutive tokens form one merge group
    assert temporal.shape == (5, 12) and spatial.shape == (4, 12)
    torch.testing.assert_close(temporal, groups.mean(1))
    torch.testing.assert_close(spatial, groups.mean(0))


def test_video_tokens_get_3d_rope_positions(tiny_qwen):
    """Temporal tokens: one time step each; spatial tokens: the image grid. Batched left-padded
    generation of two videos with different T equals generating each on its own."""
    llm = build_video_llm(str(tiny_qwen), "both", "copy", CPU, torch.float32)
    width = 4 * (llm.backbone.config.vision_config.hidden_size if llm.backbone.config.model_type == "qwen2_5_vl"
                 else llm.backbone.config.vision_config.embed_dim)
    generator = torch.Generator().manual_seed(0)
    samples = [VideoSample(llm.chat.encode(q), torch.randn(t, width, generator=generator),
                           torch.randn(64, width, generator=generator)) for q, t in zip(QUESTIONS, (3, 5))]
    pad = llm.chat.tokenizer.pad_token_id
    batch = collate(samples, llm.adapter.layout, llm.chat.placeholder_id, pad, padding_side="left", with_labels=False)
    extra = llm.backbone_inputs(batch)
    positions, _ = llm.backbone.model.get_rope_index(
        extra["input_ids"], mm_token_type_ids=extra["mm_token_type_ids"], image_grid_thw=extra["image_grid_thw"],
        video_grid_thw=extra["video_grid_thw"], attention_mask=batch.attention_mask)
    row = positions[:, 1]  # (3, L) for the 5-frame video
    video = (extra["mm_token_type_ids"][1] == 2).nonzero().squeeze(-1)
    image = (extra["mm_token_type_ids"][1] == 1).nonzero().squeeze(-1)
    assert len(video) == 5 and len(image) == 64
    steps = row[0, video].diff()
    assert (steps > 0).all() and len(set(steps.tolist())) == 1  # evenly spaced in time
    assert (row[1, video] == row[1, video[0]]).all()
    assert sorted(set(row[1, image].tolist())) == list(range(row[1, image].min(), row[1, image].min() + 8))
    llm.chat.decode = lambda ids: ids.tolist()
    together = llm.generate(batch, max_new_tokens=4)
    alone = [llm.generate(collate([s], llm.adapter.layout, llm.chat.placeholder_id, pad, padding_side="left",
                                  with_labels=False), max_new_tokens=4)[0] for s in samples]
    assert together == alone


def test_image_size_must_fit_the_patch_grid(tiny_qwen, tiny_llava):
    assert load_family(str(tiny_qwen), image_size=448).frame_preprocess().resize_hw == (448, 448)
    with pytest.raises(UserError, match="multiple of 28"):
        load_family(str(tiny_qwen), image_size=300)
    with pytest.raises(UserError, match="--image-size"):
        load_family(str(tiny_llava), image_size=224)


def test_chinese_end_to_end_extract_train_predict_ask(tiny_qwen, synthetic_videos, tmp_path):
    """The paper's second headline: Chinese instructions in training, a Chinese question at ask,
    Chinese text intact in every output file."""
    cache, run = tmp_path / "cache.h5", tmp_path / "run"
    answers = {"order": "红色先出现，然后是蓝色。", "direction": "方块向右移动。"}
    videos = sorted(p.stem for p in synthetic_videos.glob("*.mp4"))
    train_qa = [{"video_id": v, "q": "视频里发生了什么？", "a": answers[v.split("_")[0]]} for v in videos]
    (tmp_path / "qa_zh.json").write_text(json.dumps(train_qa, ensure_ascii=False), encoding="utf-8")
    eval_qa = [{"video_name": v, "question": "哪个颜色先出现？", "answer": "红色", "question_id": v} for v in videos]
    (tmp_path / "eval_zh.json").write_text(json.dumps(eval_qa, ensure_ascii=False), encoding="utf-8")

    def run_cli(*args):
        done = subprocess.run([sys.executable, "-m", *args], env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    run_cli("redvillm.extract", str(synthetic_videos), str(cache), "--model", str(tiny_qwen), "--num-frames", "6",
            "--decode-workers", "1", "--device", "cpu")
    info = open_cache(cache).info
    assert (info["family"], info["num_patches"], info["vision"]["image_size"]) == (tiny_qwen.name, 256, 224)
    run_cli("redvillm.train", str(cache), "--annotations", str(tmp_path / "qa_zh.json"), "--output", str(run),
            "--model", str(tiny_qwen), "--batch-size", "4", "--max-steps", "2", "--device", "cpu", "--num-workers", "0")
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert log and all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    predictions = tmp_path / "preds.jsonl"
    run_cli("redvillm.evaluate", "predict", "--model-dir", str(run), "--cache", str(cache), "--questions",
            str(tmp_path / "eval_zh.json"), "--output", str(predictions), "--max-new-tokens", "3", "--device", "cpu")
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(videos) and {r["question"] for r in rows} == {"哪个颜色先出现？"}
    assert "哪个颜色先出现" in predictions.read_text(encoding="utf-8")  # not \\u-escaped
    run_cli("redvillm.evaluate", "judge", str(predictions), "--task", "qa", "--output", str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["metrics"]["count"] == len(videos)
    saved = json.loads((run / "redvillm_config.json").read_text(encoding="utf-8"))
    assert saved["family"] == tiny_qwen.name and saved["extra"]["cache"]["vision"]["image_size"] == 224
    # ask extracts the video on the fly at the cache's image size (224) and answers in the terminal
    run_cli("redvillm.evaluate", "ask", str(run), str(synthetic_videos / f"{videos[0]}.mp4"),
            "这个视频里的方块往哪个方向移动？", "--max-new-tokens", "3", "--device", "cpu")


def test_a_qwen_cache_does_not_impose_its_frame_size_on_another_family(tiny_qwen, tiny_llava):
    """Training LLaVA on a Qwen cache must fail as 'another model's cache', not as a bad --image-size."""
    from redvillm.families.registry import family_for_cache

    info = {"family": tiny_qwen.name, "vision": {"image_size": 224}}
    assert family_for_cache(str(tiny_llava), None, info).name == "llava"
    assert family_for_cache(str(tiny_qwen), None, {**info, "vision": {"image_size": 448}}).image_size == 448
