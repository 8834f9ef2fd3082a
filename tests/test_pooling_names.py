"""Pooling names: the canonical ones and the paper's aliases mean the same layout; runs record
the canonical name; runs (and checkpoints) that recorded an alias still load and resume."""

import json

import pytest

from redvillm.model_io import ADAPTER_FILE, CONFIG_FILE, read_model_config
from redvillm.pooling import POOLINGS, canonical_pooling
from redvillm.train.config import TrainConfig
from redvillm.train.loop import run_train
from redvillm.batching import VideoLayout


@pytest.mark.parametrize("alias, canonical, tokens", [("temporal", "time-averaged", 49),
                                                      ("spatial", "frame-averaged", 8), ("both", "both", 57)])
def test_an_alias_is_its_canonical_name(alias, canonical, tokens):
    assert canonical_pooling(alias) == canonical and canonical in POOLINGS
    for name in (alias, canonical):
        assert VideoLayout(name).num_video_tokens(8, 49) == tokens  # T = 8 temporal, N = 49 spatial tokens
        assert TrainConfig("c.h5", "a.json", "out", pooling=name).pooling == canonical
    with pytest.raises(ValueError, match="time-averaged"):
        canonical_pooling("mean")


def test_a_run_that_recorded_an_alias_loads_under_the_canonical_name(tmp_path):
    (tmp_path / ADAPTER_FILE).write_bytes(b"")
    (tmp_path / CONFIG_FILE).write_text(json.dumps({
        "model": "m", "revision": None, "family": "llava", "pooling": "spatial", "temporal_module": "copy",
        "num_frames": 8, "num_patches": 49, "hidden_size": 64}))
    assert read_model_config(tmp_path).pooling == "frame-averaged"


def test_a_checkpoint_that_recorded_an_alias_resumes(small_cache, qa_file, tiny_llava, tmp_path):
    def cfg(resume):
        return TrainConfig(str(small_cache), str(qa_file), str(tmp_path), model=str(tiny_llava), batch_size=4,
                           max_steps=2, num_workers=0, device="cpu", resume=resume, pooling="time-averaged")

    run_train(cfg(False))
    root = tmp_path / "checkpoints"
    state_file = root / (root / "latest").read_text().strip() / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["fingerprint"]["pooling"] = "temporal"  # as an earlier version recorded it
    state_file.write_text(json.dumps(state))
    assert run_train(cfg(True)).steps == 2  # the fingerprint check passes: the finished run is left as it is
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["pooling"] == "time-averaged"
