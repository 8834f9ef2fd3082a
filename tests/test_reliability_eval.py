"""Issue 10 on the evaluation side: no silent wrong number, no lost run (predict, runs, caches)."""

import json

import pytest

from redvillm.cache import CacheInfo, cache_mismatch, frame_differences
from redvillm.errors import UserError
from redvillm.evaluate.predict import PredictConfig, read_predictions, run_predict


def _extract(videos, model, out, num_frames=8):
    from redvillm.extract.config import ExtractConfig
    from redvillm.extract.pipeline import run_extract

    run_extract(ExtractConfig(str(videos), str(out), model=str(model), num_frames=num_frames, decode_workers=1,
                              device="cpu"))
    return out


def _questions(qa_file, tmp_path, name="qa.json", extra=()):
    rows = [{"video_name": r["video_id"], "question": r["q"], "answer": r["a"], "question_id": f"q{i}"}
            for i, r in enumerate(json.loads(qa_file.read_text()))]
    path = tmp_path / name
    path.write_text(json.dumps(rows + list(extra), ensure_ascii=False), encoding="utf-8")
    return path


def _predict(run, cache, questions, output, **overrides):
    settings = {"batch_size": 4, "max_new_tokens": 3, "device": "cpu", **overrides}
    return run_predict(PredictConfig(str(run), str(cache), str(questions), str(output), **settings))


# ------------------------------------------------------------------ 3: one compatibility check


def _info(**changes) -> CacheInfo:
    base = dict(family="llava", model="/m", revision=None, vision={"vision_feature_layer": -2},
                image_size=(224, 224), num_frames=8, num_patches=49, hidden_size=64, sampling_rule="uniform",
                short_videos="repeat", compute_dtype="float32", redvillm_version="0")
    return CacheInfo(**{**base, **changes})


def test_one_check_reads_what_fits_a_model_and_appends_only_the_same_configuration():
    cached = _info()
    assert cache_mismatch(cached, _info(num_frames=100, sampling_rule="videochatgpt")) is None  # tokens still fit
    assert cache_mismatch(cached, {"family": "llava", "revision": None}) is None  # unstated keys: not compared
    assert cache_mismatch(cached, _info(vision={"vision_feature_layer": -1})) == \
        "vision.vision_feature_layer is -2 in the cache, -1 here"
    assert cache_mismatch(cached, _info(image_size=[336, 336])).startswith("image_size is (224, 224)")
    assert cache_mismatch(cached, _info(model="/other")) == "model is '/m' in the cache, '/other' here"
    assert cache_mismatch(cached, _info(num_frames=100), append=True) == "num_frames is 8 in the cache, 100 here"
    assert cache_mismatch(cached, _info(redvillm_version="9"), append=True) is None
    assert frame_differences(cached, _info(num_frames=100)) == \
        {"num_frames": {"training": 100, "this cache": 8}}


def test_predict_refuses_a_same_family_cache_of_another_vision_layer(trained_run, synthetic_videos, qa_file,
                                                                     tmp_path):
    from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava

    other = build_tiny_llava(tmp_path / "other-layer", TinyLlavaConfig(vision_feature_layer=-1))
    cache = _extract(synthetic_videos, other, tmp_path / "other.h5")
    out = tmp_path / "preds.jsonl"
    with pytest.raises(UserError, match=r"other\.h5: tokens do not fit the run .*vision\.vision_feature_layer is "
                                        r"-1 in the cache, -2 for the run.*redvillm-extract VIDEOS NEW\.h5 --model"):
        _predict(trained_run, cache, _questions(qa_file, tmp_path), out)
    assert not out.exists()


def test_predict_at_another_T_answers_warns_and_records(trained_run, synthetic_videos, tiny_llava, qa_file,
                                                        tmp_path, caplog):
    cache = _extract(synthetic_videos, tiny_llava, tmp_path / "t4.h5", num_frames=4)
    out = tmp_path / "preds.jsonl"
    summary = _predict(trained_run, cache, _questions(qa_file, tmp_path), out)
    assert summary.answered == 8 and summary.frames_differ == {"num_frames": {"training": 8, "this cache": 4}}
    meta = json.loads((tmp_path / "preds.meta.json").read_text())
    assert meta["frames_differ_from_training"] == {"num_frames": {"training": 8, "this cache": 4}}
    assert "num_frames is 4 here but 8" in caplog.text
    assert len(read_predictions(out)) == 8


# ------------------------------------------------------------ 2: a predictions file keeps its run


@pytest.fixture
def second_run(small_cache, qa_file, tmp_path):
    """Another run on the same cache (other seed, so other adapter weights)."""
    from redvillm.train.config import TrainConfig
    from redvillm.train.loop import run_train

    from redvillm import open_cache

    out = tmp_path / "run-b"
    run_train(TrainConfig(str(small_cache), str(qa_file), str(out), model=open_cache(small_cache).info["model"],
                          batch_size=4, max_steps=1, lr=3e-3, num_workers=0, device="cpu", seed=1))
    return out


def test_predictions_are_resumed_only_by_the_run_and_settings_that_started_them(
        trained_run, second_run, small_cache, qa_file, tmp_path):
    questions = _questions(qa_file, tmp_path)
    out = tmp_path / "preds.jsonl"
    _predict(trained_run, small_cache, questions, out)
    before = out.read_text(encoding="utf-8")
    meta = (tmp_path / "preds.meta.json").read_text()

    with pytest.raises(UserError, match=r"preds\.jsonl: holds 8 answers of other settings \(the run's adapter "
                                        r"weights differ; the run's config differs\).*--overwrite"):
        _predict(second_run, small_cache, questions, out)
    with pytest.raises(UserError, match=r"generation max_new_tokens is 3 there, 5 now"):
        _predict(trained_run, small_cache, questions, out, max_new_tokens=5)
    changed = _questions(qa_file, tmp_path, "changed.json",
                         extra=[{"video_name": "order_0000", "question": "New?", "answer": "x", "question_id": "n"}])
    with pytest.raises(UserError, match=r"the question file differs"):
        _predict(trained_run, small_cache, changed, out)
    assert out.read_text(encoding="utf-8") == before and (tmp_path / "preds.meta.json").read_text() == meta

    again = _predict(trained_run, small_cache, questions, out, batch_size=2)  # same run: resumes
    assert (again.answered, again.already_answered) == (0, 8)
    fresh = _predict(second_run, small_cache, questions, out, overwrite=True)
    assert (fresh.answered, fresh.already_answered) == (8, 0)
    assert json.loads((tmp_path / "preds.meta.json").read_text())["started_by"]["model_dir"] == str(second_run)


def test_answers_without_a_recorded_fingerprint_are_not_resumed(trained_run, small_cache, qa_file, tmp_path):
    questions = _questions(qa_file, tmp_path)
    out = tmp_path / "preds.jsonl"
    _predict(trained_run, small_cache, questions, out)
    (tmp_path / "preds.meta.json").unlink()
    with pytest.raises(UserError, match=r"holds 8 answers but preds\.meta\.json does not record"):
        _predict(trained_run, small_cache, questions, out)


# ------------------------------------------------------- 4: a run loads from any working directory


def test_a_run_trained_with_a_relative_model_path_loads_from_elsewhere(small_cache, tiny_llava, qa_file, tmp_path,
                                                                       monkeypatch):
    from redvillm import load_model
    from redvillm.train.config import TrainConfig
    from redvillm.train.loop import run_train

    monkeypatch.chdir(tiny_llava.parent)
    run = tmp_path / "run"
    run_train(TrainConfig(str(small_cache), str(qa_file), str(run), model=tiny_llava.name, batch_size=4,
                          max_steps=1, num_workers=0, device="cpu"))
    recorded = json.loads((run / "redvillm_config.json").read_text())
    assert recorded["model"] == str(tiny_llava.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_model(run).config.model == str(tiny_llava.resolve())
    summary = _predict(run, small_cache, _questions(qa_file, tmp_path), tmp_path / "p.jsonl")
    assert summary.answered == 8
    recorded["model"] = tiny_llava.name  # as an earlier version recorded it: its cache's record is used
    (run / "redvillm_config.json").write_text(json.dumps(recorded))
    assert load_model(run).config.model == str(tiny_llava.resolve())


def test_a_hub_model_is_recorded_with_its_resolved_commit(tiny_llava, tmp_path):
    """Offline, as far as it goes: a hub cache laid out as huggingface_hub writes it, resolved
    by huggingface_hub itself in a fresh process (its cache location is read at import)."""
    import os
    import shutil
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llava"
    shutil.copytree(tiny_llava, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("from redvillm.model_io import resolve_checkpoint; "
            "print(resolve_checkpoint('tiny-org/tiny-llava', None)); print(resolve_checkpoint('tiny-org/tiny-llava', 'main')); "
            "print(resolve_checkpoint('tiny-org/absent', 'main'))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    lines = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=120, cwd=tmp_path).stdout.splitlines()
    assert lines == [f"('tiny-org/tiny-llava', '{commit}')"] * 2 + ["('tiny-org/absent', 'main')"]


# ------------------------------------------------ 15: a question longer than the context is skipped


def test_a_question_longer_than_the_context_is_skipped_with_a_warning(trained_run, small_cache, qa_file, tmp_path,
                                                                      caplog):
    huge = {"video_name": "order_0000", "question": "Which colour " * 9000 + "?", "answer": "red",
            "question_id": "huge"}
    questions = _questions(qa_file, tmp_path, extra=[huge])
    out = tmp_path / "preds.jsonl"
    summary = _predict(trained_run, small_cache, questions, out)
    assert summary.answered == 8 and [row["question_id"] for row in summary.too_long] == ["huge"]
    assert summary.too_long[0]["context"] == 4096 and summary.too_long[0]["tokens"] > 4096
    assert "question huge (video order_0000) needs" in caplog.text and "context of 4096: skipped" in caplog.text
    meta = json.loads((tmp_path / "preds.meta.json").read_text())
    assert meta["too_long_questions"] == 1 and meta["too_long"][0]["question_id"] == "huge"
    assert "huge" not in read_predictions(out)
    again = _predict(trained_run, small_cache, questions, out)  # a rerun: the run goes on, the row stays skipped
    assert (again.answered, again.already_answered, len(again.too_long)) == (0, 8, 1)


@pytest.mark.parametrize("pooling", ["both", "temporal", "spatial"])
def test_sequence_length_is_what_collate_builds(pooling):
    import torch

    from redvillm.batching import VideoSample, collate, sequence_length
    from redvillm.chat import EncodedChat
    from redvillm.batching import VideoLayout

    layout = VideoLayout(pooling)
    sample = VideoSample(EncodedChat([1, 2, 9, 3], [4, 5], 2), torch.zeros(6, 8), torch.zeros(10, 8))
    batch = collate([sample], layout, placeholder_id=9, pad_id=0)
    assert sequence_length(sample.chat, layout.num_video_tokens(6, 10)) == batch.input_ids.shape[1]
    assert sequence_length(sample.chat, layout.num_video_tokens(6, 10), new_tokens=7) == batch.input_ids.shape[1] + 7
