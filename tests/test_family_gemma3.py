"""What is Gemma 3's own (the shared checks are its row in tests/test_family_conformance.py):
the video tokens as one bidirectional image block, in the forward and in every generate step;
the cache's pooled-then-mean identity through the real projector; the split-off projector's
temporal-module variants; the prompt and its <end_of_turn>; no pan-and-scan."""

import json
import shutil

import pytest
import torch
from test_family_conformance import gemma3_inputs, random_image
from transformers import Gemma3ForConditionalGeneration

from redvillm.batching import VideoSample, collate
from redvillm.errors import UserError
from redvillm.families.gemma3 import pool_patches
from redvillm.families.registry import load_family
from redvillm.model_io import build_video_llm
from redvillm.video_llm import VideoAdapter

QUESTIONS = ["Which colour appeared first, red or blue?", "这个视频里的方块往哪个方向移动？"]
CHINESE = "哪个颜色先出现？"


@pytest.fixture(scope="session")
def tiny_gemma3(tiny_model):
    """A random-weight Gemma3ForConditionalGeneration saved with save_pretrained (64 px, 8 x 8 patches -> 16 tokens)."""
    return tiny_model("gemma3", "tiny_gemma3")


def _reference_inputs(model_dir, question, seed=0):
    return gemma3_inputs(model_dir, question, random_image(240, 320, seed))  # the processor's own


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


def test_video_tokens_are_one_bidirectional_image_block(tiny_gemma3):
    """Marked as the processor marks an image's soft tokens; without the marks the video tokens
    would attend causally and the logits would change."""
    inputs = _reference_inputs(tiny_gemma3, QUESTIONS[0])
    llm, batch = _one_frame_batch(tiny_gemma3, QUESTIONS[0], inputs)
    assert torch.equal(llm.backbone_inputs(batch)["token_type_ids"], inputs["token_type_ids"])
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


def test_pan_and_scan_is_refused(tiny_gemma3, tmp_path):
    copy = shutil.copytree(tiny_gemma3, tmp_path / "pan-and-scan")
    config = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**config, "do_pan_and_scan": True}))
    with pytest.raises(UserError) as err:
        load_family(str(copy)).frame_preprocess()
    assert "\n" not in str(err.value) and "do_pan_and_scan" in str(err.value)


def test_a_checkpoint_without_chat_template_is_refused(tiny_gemma3, tmp_path):
    copy = shutil.copytree(tiny_gemma3, tmp_path / "pretrained-only")
    (copy / "chat_template.jinja").unlink()
    with pytest.raises(UserError) as err:
        load_family(str(copy)).chat_format()
    assert "\n" not in str(err.value) and "chat template" in str(err.value)


def test_chinese_answers_end_at_end_of_turn(tiny_gemma3):
    chat = load_family(str(tiny_gemma3)).chat_format()
    encoded = chat.encode(CHINESE, "红色的方块先出现。")
    tokenizer = chat.tokenizer
    assert tokenizer.convert_ids_to_tokens(encoded.answer_ids[-1]) == "<end_of_turn>"
    assert chat.decode(encoded.answer_ids) == "红色的方块先出现。"
    prompt = tokenizer.decode(encoded.prompt_ids)
    assert prompt == ("<bos><start_of_turn>user\n\n\n<start_of_image><image_soft_token><end_of_image>\n\n"
                      f"{CHINESE}<end_of_turn>\n<start_of_turn>model\n")
