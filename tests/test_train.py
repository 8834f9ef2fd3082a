"""Stage two: what is trained, what is supervised, resume, load_model, refusals."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from redvillm import load_model, open_cache
from redvillm.batching import VideoSample, collate
from redvillm.errors import UserError
from redvillm.model_io import build_video_llm
from redvillm.train.config import TrainConfig
from redvillm.train.loop import run_train

CPU = torch.device("cpu")


def config(small_cache, qa_file, tiny_llava, output, **overrides):
    base = dict(model=str(tiny_llava), batch_size=4, epochs=2, lr=3e-3, num_workers=0, log_every=1,
                device="cpu", save_every=1000)
    return TrainConfig(str(small_cache), str(qa_file), str(output), **{**base, **overrides})


def test_loss_covers_the_answer_tokens_only(tiny_llava):
    llm = build_video_llm(str(tiny_llava), "both", "copy", CPU, torch.float32)
    chat = llm.chat.encode("Which way does the square move, left or right?", "The square moves to the right.")
    sample = VideoSample(chat, torch.zeros(8, 64), torch.zeros(49, 64))
    batch = collate([sample, sample], llm.adapter.layout, llm.chat.placeholder_id, pad_id=0)
    supervised = batch.labels[0][batch.labels[0] != -100]
    text = llm.chat.tokenizer.decode(supervised)
    assert text.strip() == "The square moves to the right.</s>"
    assert (batch.input_ids[0] == llm.chat.placeholder_id).sum() == 8 + 49  # [temporal, spatial]
    prompt = llm.chat.tokenizer.decode(batch.input_ids[0][batch.labels[0] == -100])
    assert prompt.startswith("<s>USER: <image>") and prompt.endswith("right? ASSISTANT:")


@pytest.mark.parametrize("pooling,module,tokens,projectors", [
    ("both", "copy", 57, 2), ("both", "none", 57, 1), ("temporal", "copy", 49, 1), ("spatial", "copy", 8, 2),
    ("both", "copy+mlp", 57, 2), ("both", "random", 57, 2)])
def test_ablation_variants(tiny_llava, pooling, module, tokens, projectors):
    llm = build_video_llm(str(tiny_llava), pooling, module, CPU, torch.float32)
    assert llm.adapter.layout.num_video_tokens(8, 49) == tokens
    projector = sum(p.numel() for p in llm.adapter.spatial_proj.parameters())
    mlp = 2 * (64 * 64 + 64) if module == "copy+mlp" else 0
    assert llm.trainable_parameters() == projector * projectors + mlp
    if llm.adapter.temporal_proj is not None:
        copy = llm.adapter.temporal_proj[0] if module == "copy+mlp" else llm.adapter.temporal_proj
        same = all(torch.equal(a, b) for a, b in zip(copy.parameters(), llm.adapter.spatial_proj.parameters()))
        assert same == (module != "random")  # the copy starts from the pretrained weights


def test_training_moves_only_the_adapter_and_load_model_restores_it(small_cache, qa_file, tiny_llava, tmp_path):
    summary = run_train(config(small_cache, qa_file, tiny_llava, tmp_path / "run"))
    assert summary.steps == 4 and summary.last_loss < summary.first_loss
    run = tmp_path / "run"
    saved = load_file(run / "adapter.safetensors")
    assert any(k.startswith("temporal_proj.") for k in saved) and any(k.startswith("spatial_proj.") for k in saved)
    meta = json.loads((run / "redvillm_config.json").read_text())
    assert (meta["pooling"], meta["temporal_module"], meta["num_frames"], meta["num_patches"]) == ("both", "copy", 8, 49)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all("lr" in r and "loss" in r for r in log)

    model = load_model(run)
    for name, value in model.adapter.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    fresh = build_video_llm(str(tiny_llava), "both", "copy", CPU, torch.float32)
    for (name, a), b in zip(model.backbone.named_parameters(), fresh.backbone.parameters()):
        if "multi_modal_projector" not in name:
            assert torch.equal(a, b), f"frozen {name} changed"
    assert not torch.equal(model.adapter.spatial_proj.linear_1.weight, fresh.adapter.spatial_proj.linear_1.weight)


def test_resumed_run_equals_uninterrupted_run(small_cache, qa_file, tiny_llava, tmp_path):
    straight = run_train(config(small_cache, qa_file, tiny_llava, tmp_path / "a", batch_size=2, epochs=2))
    cfg = config(small_cache, qa_file, tiny_llava, tmp_path / "b", batch_size=2, epochs=2)
    first = run_train(cfg, should_stop=lambda step: step == 5)  # mid-epoch (4 steps per epoch)
    cfg.resume = True
    second = run_train(cfg)
    assert first.steps == 5 and second.steps == straight.steps == 8
    np.testing.assert_allclose(first.losses + second.losses, straight.losses, rtol=1e-6)
    a, b = load_file(tmp_path / "a" / "adapter.safetensors"), load_file(tmp_path / "b" / "adapter.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    logged = [json.loads(line)["loss"] for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(logged, straight.losses, rtol=1e-6)


def test_rows_without_cached_video_are_skipped_or_refused(small_cache, qa_file, tiny_llava, tmp_path):
    rows = json.loads(qa_file.read_text())
    rows.append({"video_id": "not_extracted", "q": "Which way?", "a": "Left."})
    annotations = tmp_path / "qa.json"
    annotations.write_text(json.dumps(rows))
    plans = []
    run_train(config(small_cache, annotations, tiny_llava, tmp_path / "run", max_steps=1), announce=plans.append)
    assert plans[0].skipped_rows == 1 and plans[0].skipped_examples == ["not_extracted"]
    with pytest.raises(UserError, match="1 rows name 1 videos that are not in .*not_extracted"):
        run_train(config(small_cache, annotations, tiny_llava, tmp_path / "strict", strict=True))


def test_refuses_a_cache_made_for_another_model(small_cache, qa_file, tmp_path):
    from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava

    other = build_tiny_llava(tmp_path / "other", TinyLlavaConfig(vision_feature_layer=-1))
    with pytest.raises(UserError, match="extracted for .* not for --model"):
        run_train(config(small_cache, qa_file, other, tmp_path / "run"))


def test_refuses_to_overwrite_a_run_without_resume(small_cache, qa_file, tiny_llava, tmp_path):
    run_train(config(small_cache, qa_file, tiny_llava, tmp_path / "run", max_steps=1))
    with pytest.raises(UserError, match="pass --resume"):
        run_train(config(small_cache, qa_file, tiny_llava, tmp_path / "run", max_steps=1))


def test_chinese_instructions_end_to_end(small_cache, tiny_llava, tmp_path):
    """Chinese text reaches the model and comes back intact: the prompt ids decode to the exact
    question, the supervised ids to the exact answer, and a prediction row keeps the question
    byte for byte (UTF-8, not escaped)."""
    from redvillm.evaluate.predict import PredictConfig, read_predictions, run_predict

    question, reply = "方块先出现的是什么颜色？", "红色的方块先出现。"
    cache = open_cache(small_cache)
    rows = [{"video_id": v, "q": question, "a": reply} for v in cache]
    annotations = tmp_path / "zh.json"
    annotations.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    run_train(config(small_cache, annotations, tiny_llava, tmp_path / "run", max_steps=2))
    model = load_model(tmp_path / "run")
    tokenizer = model.chat.tokenizer
    encoded = model.chat.encode(question, reply)
    prompt = tokenizer.decode(encoded.prompt_ids, skip_special_tokens=True)
    assert question in prompt, prompt
    assert tokenizer.decode(encoded.answer_ids, skip_special_tokens=True).strip() == reply
    sample = VideoSample(model.chat.encode(question), *_pooled(model, cache))
    batch = collate([sample], model.adapter.layout, model.chat.placeholder_id, 0, padding_side="left",
                    with_labels=False)
    assert tokenizer.decode(batch.input_ids[0], skip_special_tokens=True) == \
        tokenizer.decode(model.chat.encode(question).prompt_ids, skip_special_tokens=True)

    video = next(iter(cache))
    questions = tmp_path / "zh_qa.json"
    questions.write_text(json.dumps([{"video_name": video, "question": question, "answer": reply,
                                      "question_id": "zh"}], ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "preds.jsonl"
    run_predict(PredictConfig(str(tmp_path / "run"), str(small_cache), str(questions), str(out), batch_size=1,
                              max_new_tokens=4, device="cpu"))
    row = read_predictions(out)["zh"]
    assert row["question"].encode("utf-8") == question.encode("utf-8") and row["answer"] == reply
    assert question.encode("utf-8") in out.read_bytes()  # stored as UTF-8, not as \\u escapes
    assert isinstance(row["pred"], str)


def _pooled(model, cache):
    from redvillm.families.registry import load_family

    tokens = torch.from_numpy(cache[next(iter(cache))])
    return load_family(model.config.model).pool(tokens)


def test_resume_of_a_finished_run_changes_nothing_and_overwrite_starts_over(small_cache, qa_file, tiny_llava, tmp_path):
    cfg = config(small_cache, qa_file, tiny_llava, tmp_path / "run", max_steps=2)
    run_train(cfg)
    before = load_file(tmp_path / "run" / "adapter.safetensors")
    cfg.resume = True
    again = run_train(cfg)
    after = load_file(tmp_path / "run" / "adapter.safetensors")  # (the header's metadata order may vary)
    assert again.losses == [] and all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys()
    cfg.resume, cfg.overwrite = False, True
    assert run_train(cfg).steps == 2
