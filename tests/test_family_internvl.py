"""InternVL3 (InternVLForConditionalGeneration) on a tiny replica: the oracle against the model's own
image forward, pooling around the pixel shuffle, frame preprocessing, and the three CLIs end to end.

transformers' InternVLProcessor refuses to be built without torchvision (its video half needs it);
the reference processor here is InternVLProcessor itself, built from the checkpoint's own image
processor, tokenizer and template with that one class check skipped for video_processor=None.
"""

import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    GotOcr2ImageProcessorPil,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    ProcessorMixin,
)

from redvillm import open_cache
from redvillm.batching import VideoSample, collate
from redvillm.errors import UserError
from redvillm.families.internvl import InternVLFamily
from redvillm.families.registry import load_family
from redvillm.frames import FramePreprocess, normalize, resize_and_crop
from redvillm.model_io import build_video_llm

QUESTIONS = ["Which colour appeared first, red or blue?", "这个视频里的方块往哪个方向移动？"]
CHINESE = "哪个颜色先出现？"
CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_internvl(tmp_path_factory):
    """A random-weight InternVLForConditionalGeneration saved with save_pretrained (64 px, patch 8)."""
    from redvillm.data.tiny_internvl import build_tiny_internvl

    return build_tiny_internvl(tmp_path_factory.mktemp("models") / "tiny-internvl")


@pytest.fixture(scope="session")
def reference(tiny_internvl):
    return InternVLForConditionalGeneration.from_pretrained(tiny_internvl).eval()


@pytest.fixture(scope="session")
def processor(tiny_internvl):
    processor_dict, _ = InternVLProcessor.get_processor_dict(tiny_internvl)
    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, name, argument):
        return None if name == "video_processor" and argument is None else original(self, name, argument)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProcessorMixin, "check_argument_for_proper_class", check)
        return InternVLProcessor(image_processor=AutoImageProcessor.from_pretrained(tiny_internvl),
                                 tokenizer=AutoTokenizer.from_pretrained(tiny_internvl), video_processor=None,
                                 image_seq_length=processor_dict["image_seq_length"],
                                 chat_template=processor_dict["chat_template"])


def random_frame(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("question", QUESTIONS)
def test_one_frame_equals_backbone_image_forward(tiny_internvl, reference, processor, question, caplog):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # One tile, as our frames: the processor tiles images unless told not to.
    inputs = processor(images=Image.fromarray(random_frame(240, 320)), text=prompt, return_tensors="pt",
                       crop_to_patches=False)
    with torch.no_grad():
        expected = reference(**inputs).logits

    caplog.set_level(logging.INFO, logger="redvillm.families.internvl")
    family = load_family(str(tiny_internvl))
    encoder = family.load_frame_encoder(CPU, torch.float32)
    assert "loading the whole model" not in caplog.text  # the tower came from its own weights only
    llm = build_video_llm(str(tiny_internvl), "temporal", "none", CPU, torch.float32)
    with torch.no_grad():
        frame_tokens = encoder(inputs["pixel_values"])  # (T=1, N, D): a one-frame video
        temporal, spatial = family.pool(frame_tokens)
        sample = VideoSample(llm.chat.encode(question), temporal, spatial)
        batch = collate([sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0, with_labels=False)
        ours = llm.logits(batch)
    assert torch.equal(batch.input_ids, inputs["input_ids"])  # same prompt, <img> ... </img> included
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_pooling_respects_the_pixel_shuffle(tiny_internvl, reference):
    family = load_family(str(tiny_internvl))
    encoder = family.load_frame_encoder(CPU, torch.float32)
    pixel_values = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        frames = encoder(pixel_values)  # (T, N, D)
        assert frames.shape == (3, 64, 64)  # N = (64 / 8)^2 before the shuffle, D = vision width
        one = frames[0]
        shuffled_one = reference.model.pixel_shuffle(one.reshape(1, 8, 8, 64), scale_factor=0.5).reshape(16, 256)
        image_features = reference.model.get_image_features(pixel_values[:1]).pooler_output[0]  # (N/4, K)

        temporal, spatial = family.pool(one.expand(5, -1, -1))  # T identical frames
        torch.testing.assert_close(spatial, shuffled_one, rtol=0, atol=1e-6)
        torch.testing.assert_close(temporal, shuffled_one.mean(dim=0).expand(5, -1), rtol=0, atol=1e-6)
        torch.testing.assert_close(reference.model.multi_modal_projector(spatial), image_features)

        temporal, spatial = family.pool(frames)  # different frames: pooling commutes with the shuffle
        groups = family.pixel_shuffle(frames)  # (T, N/4, 4D)
        torch.testing.assert_close(spatial, family.pixel_shuffle(frames.mean(dim=0, keepdim=True))[0])
        torch.testing.assert_close(temporal, groups.mean(dim=1))
        assert temporal.shape == (3, 256) and spatial.shape == (16, 256)


def test_an_earlier_vision_layer_is_what_the_model_selects(tiny_internvl, reference):
    config = AutoConfig.from_pretrained(tiny_internvl)
    config.vision_feature_layer = -2
    family = InternVLFamily(str(tiny_internvl), config)
    encoder = family.load_frame_encoder(CPU, torch.float32)
    assert len(encoder.tower.encoder.layer) == 1  # stopped at the selected layer
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.model.get_image_features(pixel_values, vision_feature_layer=-2).pooler_output
        ours = reference.model.multi_modal_projector(family.pixel_shuffle(encoder(pixel_values)))
    torch.testing.assert_close(ours, expected)
    assert family.vision_provenance()["vision_feature_layer"] == -2


@pytest.mark.parametrize("size", [64, 448])  # the replica's tile, InternVL3's
@pytest.mark.parametrize("hw", [(480, 270), (240, 320)])  # portrait: Pillow resizes vertically first
def test_frames_match_the_image_processor(tiny_internvl, size, hw):
    image_processor = AutoImageProcessor.from_pretrained(tiny_internvl)
    spec = load_family(str(tiny_internvl)).frame_preprocess()
    if size != 64:  # the same numbers at InternVL3's tile size
        square = {"height": size, "width": size}
        image_processor = GotOcr2ImageProcessorPil(**{**image_processor.to_dict(), "size": square})
        spec = FramePreprocess.from_hf(image_processor)
    assert spec.resize_hw == (size, size) and spec.crop_hw is None and spec.mean == (0.485, 0.456, 0.406)
    frame = random_frame(*hw, seed=2)
    expected = image_processor(Image.fromarray(frame), return_tensors="pt", crop_to_patches=False)["pixel_values"]
    ours = normalize(resize_and_crop(torch.from_numpy(frame[None]), spec), spec, torch.float32)
    assert ours.shape == expected.shape == (1, 3, size, size)
    levels = (ours - expected).abs() * torch.tensor(spec.std).view(1, 3, 1, 1) * 255
    assert levels.max() <= 1.001, f"max {levels.max():.2f} uint8 levels apart"
    assert levels.mean() <= 0.01


def test_image_size_is_refused(tiny_internvl):
    with pytest.raises(UserError, match="--image-size") as err:
        load_family(str(tiny_internvl), image_size=448)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="session")
def internvl_cache(tiny_internvl, synthetic_videos, tmp_path_factory):
    """redvillm-extract with the tiny replica: 4 frames of every sample video."""
    from redvillm.extract.cli import main as extract

    out = tmp_path_factory.mktemp("internvl-cache") / "cache.h5"
    result = CliRunner().invoke(extract, [str(synthetic_videos), str(out), "--model", str(tiny_internvl),
                                          "--num-frames", "4", "--decode-workers", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out


def test_extract_train_predict_ask(internvl_cache, tiny_internvl, synthetic_videos, qa_file, tmp_path):
    from redvillm.evaluate.cli import main as evaluate
    from redvillm.train.cli import main as train

    cache = open_cache(internvl_cache)
    info = cache.info
    assert (info["family"], info["num_patches"], info["hidden_size"], info["num_frames"]) == ("internvl", 64, 64, 4)
    assert info["vision"]["downsample_ratio"] == 0.5 and info["vision"]["cached_tokens"] == "before pixel shuffle"
    assert tuple(info["image_size"]) == (64, 64)
    video_id = next(iter(cache))
    assert cache[video_id].shape == (4, 64, 64)  # (T, N, D): pre-shuffle patches

    run = tmp_path / "run"
    result = CliRunner().invoke(train, [str(internvl_cache), "--annotations", str(qa_file),
                                        "--model", str(tiny_internvl), "--output", str(run), "--batch-size", "4",
                                        "--max-steps", "2", "--lr", "3e-3", "--num-workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "redvillm_config.json").read_text())
    assert (config["family"], config["num_patches"], config["hidden_size"]) == ("internvl", 64, 64)
    assert (run / "adapter.safetensors").is_file()

    rows = [{"video_name": r["video_id"], "question": r["q"], "answer": r["a"], "question_id": f"q{i}"}
            for i, r in enumerate(json.loads(qa_file.read_text())[:3])]
    rows.append({"video_name": video_id, "question": CHINESE, "answer": "红色", "question_id": "zh"})
    questions = tmp_path / "msvd_qa.json"
    questions.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    predictions = tmp_path / "preds.jsonl"
    result = CliRunner().invoke(evaluate, ["predict", "--model-dir", str(run), "--cache", str(internvl_cache),
                                           "--questions", str(questions), "--output", str(predictions),
                                           "--batch-size", "2", "--max-new-tokens", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    records = {r["question_id"]: r for r in map(json.loads, predictions.read_text(encoding="utf-8").splitlines())}
    assert set(records) == {"q0", "q1", "q2", "zh"} and all(isinstance(r["pred"], str) for r in records.values())
    assert records["zh"]["question"] == CHINESE and CHINESE in predictions.read_text(encoding="utf-8")

    video = next(synthetic_videos.glob("*.mp4"))
    result = CliRunner().invoke(evaluate, ["ask", str(run), str(video), QUESTIONS[1], "--max-new-tokens", "3",
                                           "--device", "cpu"])
    assert result.exit_code == 0, result.output


def test_train_refuses_an_internvl_cache_for_llava(internvl_cache, tiny_llava, qa_file, tmp_path):
    from redvillm.train.cli import main as train

    result = CliRunner().invoke(train, [str(internvl_cache), "--annotations", str(qa_file), "--model", str(tiny_llava),
                                        "--output", str(tmp_path / "run"), "--device", "cpu", "--num-workers", "0"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # the progress bar leaves a blank line
    assert len(lines) == 1 and "extracted for" in lines[0] and "(internvl" in lines[0], result.stderr
    assert not (tmp_path / "run" / "adapter.safetensors").exists()
