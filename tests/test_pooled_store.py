"""A pooled cache (``redvillm-extract --store pooled``) gives bit for bit what a raw cache of the
same videos gives: the same pooled sets, training losses, adapter weights and predictions for
every ablation; a raw cache converts into the same bytes; the pooled path never holds a video's
(T, N, D) tokens; and the faults of stage one are handled alike in both stores (non-finite
tokens: tests/test_reliability_extract.py, for both stores)."""

import gc
import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from redvillm.cache import BadTokens, open_cache, shards_dir
from redvillm.errors import UserError
from redvillm.evaluate.config import PredictConfig
from redvillm.evaluate.predict import read_predictions, run_predict
from redvillm.extract import pipeline
from redvillm.extract.config import ExtractConfig
from redvillm.extract.pipeline import run_extract
from redvillm.extract.store import ShardWriter
from redvillm.families.registry import load_family
from redvillm.pooled_sets import RunningPool, pooled_sets
from redvillm.train.config import TrainConfig
from redvillm.train.loop import run_train

FRAMES, BATCH = 8, 3  # three encoder batches per video: the pooled path sees 3 + 3 + 2 frames
ABLATIONS = [("both", "copy"), ("time-averaged", "copy"), ("frame-averaged", "copy"), ("both", "none"),
             ("both", "copy+mlp"), ("both", "random")]


def extract(videos, out, model=None, **overrides):
    settings = dict(num_frames=FRAMES, decode_workers=1, device="cpu", batch_size=BATCH)
    if model is None:  # VIDEOS is a cache: its own model and frame settings apply
        settings = {}
    else:
        settings["model"] = str(model)
    return run_extract(ExtractConfig(str(videos), str(out), **{**settings, **overrides}))


def copy_cache(index, target):
    shutil.copy(index, target)
    shutil.copytree(shards_dir(index), shards_dir(target))
    return target


@pytest.fixture(scope="module")
def stores(synthetic_videos, tiny_llava, tmp_path_factory):
    """{raw, pooled, converted} caches of the sample videos, and the frame batches the pooled
    extraction pooled (it runs with encode_frames, which builds a (T, N, D) array, refused)."""
    root = tmp_path_factory.mktemp("stores")
    extract(synthetic_videos, root / "raw.h5", tiny_llava)
    batches, real_add = [], RunningPool.add

    def refused(*args, **kwargs):
        raise AssertionError("the pooled path built a (T, N, D) array")

    def spy(self, tokens):
        batches.append(tokens.shape)
        return real_add(self, tokens)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "encode_frames", refused)
        patch.setattr(ShardWriter, "add", refused)
        patch.setattr(RunningPool, "add", spy)
        extract(synthetic_videos, root / "pooled.h5", tiny_llava, store="pooled")
    converted = extract(root / "raw.h5", root / "converted.h5", store="pooled")
    assert (converted.extracted, converted.frames, converted.failures) == (8, 8 * FRAMES, [])
    return {"raw": root / "raw.h5", "pooled": root / "pooled.h5", "converted": root / "converted.h5",
            "batches": batches}


def test_pooled_sets_are_the_raw_caches_bit_for_bit_and_conversion_writes_the_same_bytes(stores, tiny_llava):
    raw, pooled, converted = (open_cache(stores[k]) for k in ("raw", "pooled", "converted"))
    family = load_family(str(tiny_llava))
    assert sorted(raw) == sorted(pooled) == sorted(converted) and len(raw) == 8
    assert pooled.info == converted.info == {**raw.info, "store": "pooled"}
    for video_id in raw:
        want = pooled_sets(family.pool, raw[video_id])  # what a raw cache's readers compute
        for got in (pooled.pooled(video_id, None), converted.pooled(video_id, None)):
            for a, b in zip(got, want):
                assert a.dtype == b.dtype == np.float16 and a.tobytes() == b.tobytes(), video_id
        assert [w.shape for w in want] == [(FRAMES, 64), (49, 64)]
        assert pooled.meta(video_id) == converted.meta(video_id) == raw.meta(video_id)  # provenance kept
    with h5py.File(pooled.shard_path("order_0000"), "r") as f:
        group = f["videos"]["order_0000"]
        assert f.attrs["checksum"] == "fletcher32" and all(group[k].fletcher32 for k in ("temporal", "spatial"))


def test_a_pooled_cache_is_a_small_fraction_of_the_raw_one(stores):
    def bytes_per_video(index):
        shards = shards_dir(index).glob("r*.h5")
        return sum(p.stat().st_size for p in shards) / len(open_cache(index))

    raw, pooled = bytes_per_video(stores["raw"]), bytes_per_video(stores["pooled"])
    assert FRAMES * 49 * 64 * 2 < raw and (FRAMES + 49) * 64 * 2 < pooled < raw / 4  # tokens + HDF5's overhead


def test_a_pooled_cache_has_no_frame_tokens_to_give(stores):
    with pytest.raises(UserError, match=r"pooled cache .* not its \(T, N, D\) frame tokens; re-extract with --store raw"):
        open_cache(stores["pooled"])["order_0000"]


def test_the_pooled_path_pools_batch_by_batch_and_never_holds_a_videos_frame_tokens(stores):
    # The fixture's extraction would have failed had it called encode_frames or ShardWriter.add.
    assert stores["batches"] == [(1, 49, 64)] + [(3, 49, 64), (3, 49, 64), (2, 49, 64)] * 8  # N', D' probed first


@pytest.mark.parametrize("pooling,module", ABLATIONS)
def test_every_ablation_trains_and_predicts_alike_on_both_stores(stores, qa_file, tiny_llava, tmp_path, pooling,
                                                               module):
    questions = tmp_path / "questions.json"
    rows = json.loads(qa_file.read_text())[:6]
    questions.write_text(json.dumps([{"video_name": r["video_id"], "question": r["q"], "answer": r["a"],
                                      "question_id": f"q{i}"} for i, r in enumerate(rows)]))
    losses, adapters, answers = {}, {}, {}
    for store, workers in (("raw", 0), ("pooled", 1)):  # a DataLoader worker reads the pooled cache itself
        run = tmp_path / store
        summary = run_train(TrainConfig(str(stores[store]), str(qa_file), str(run), model=str(tiny_llava),
                                        pooling=pooling, temporal_module=module, batch_size=4, max_steps=2, lr=3e-3,
                                        num_workers=workers, device="cpu", seed=0))
        losses[store], adapters[store] = summary.losses, load_file(run / "adapter.safetensors")
        run_predict(PredictConfig(str(run), str(stores[store]), str(questions), str(tmp_path / f"{store}.jsonl"),
                                  batch_size=3, max_new_tokens=4, device="cpu"))
        answers[store] = {k: r["pred"] for k, r in read_predictions(tmp_path / f"{store}.jsonl").items()}
    assert len(losses["raw"]) == 2 and losses["raw"] == losses["pooled"]
    assert adapters["raw"].keys() == adapters["pooled"].keys()
    assert all(torch.equal(adapters["raw"][k], adapters["pooled"][k]) for k in adapters["raw"])
    assert len(answers["raw"]) == 6 and answers["raw"] == answers["pooled"]


def test_a_family_whose_pooled_width_differs_pools_alike_in_both_stores(synthetic_videos, tiny_model, qa_file,
                                                                        tmp_path):
    """InternVL pools over its pixel shuffle's 2x2 groups: N' = N / 4, D' = 4D."""
    model = tiny_model("internvl", "tiny_internvl")
    extract(synthetic_videos, tmp_path / "raw.h5", model)
    extract(synthetic_videos, tmp_path / "pooled.h5", model, store="pooled")
    extract(tmp_path / "raw.h5", tmp_path / "converted.h5", store="pooled")
    raw, pooled, converted = (open_cache(tmp_path / f"{k}.h5") for k in ("raw", "pooled", "converted"))
    family = load_family(str(model))
    for video_id in raw:
        want = pooled_sets(family.pool, raw[video_id])
        assert [w.shape for w in want] == [(FRAMES, 256), (16, 256)] and raw[video_id].shape == (FRAMES, 64, 64)
        for got in (pooled.pooled(video_id, None), converted.pooled(video_id, None)):
            assert all(a.tobytes() == b.tobytes() for a, b in zip(got, want)), video_id
    losses = [run_train(TrainConfig(str(tmp_path / f"{store}.h5"), str(qa_file), str(tmp_path / store),
                                    model=str(model), batch_size=4, max_steps=2, num_workers=0, device="cpu")).losses
              for store in ("raw", "pooled")]
    assert len(losses[0]) == 2 and losses[0] == losses[1]


def test_stores_are_never_mixed(stores, synthetic_videos, tiny_llava, tmp_path):
    raw = copy_cache(stores["raw"], tmp_path / "raw.h5")
    pooled = copy_cache(stores["pooled"], tmp_path / "pooled.h5")
    into_raw = f"{raw}: holds raw tokens, this run writes pooled ones (store is 'raw' there, 'pooled' here); " \
               "pass --store raw to add to it, use another OUT, or --overwrite to replace it"
    cases = [
        ((synthetic_videos, pooled, tiny_llava), "raw", f"{pooled}: holds pooled tokens, this run writes raw ones "
                                                        "(store is 'pooled' there, 'raw' here); pass --store pooled"),
        ((synthetic_videos, raw, tiny_llava), "pooled", into_raw),
        ((stores["raw"], raw), "pooled", into_raw),  # converting into a raw OUT
        ((pooled, tmp_path / "new.h5"), "pooled", f"{pooled}: a pooled cache already"),
        ((raw, tmp_path / "new.h5"), "raw", f"{raw}: VIDEOS is a raw cache; pass --store pooled"),
    ]
    for args, store, message in cases:
        with pytest.raises(UserError) as err:
            extract(*args, store=store)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(UserError) as err:  # not the store alone: --store would not do
        extract(synthetic_videos, raw, tiny_llava, store="pooled", num_frames=4)
    assert str(err.value) == f"{raw}: holds raw tokens, this run writes pooled ones (num_frames is 8 there, 4 here); " \
                             "use another OUT or --overwrite to replace it"
    assert sorted(open_cache(raw)) == sorted(open_cache(stores["raw"]))  # nothing was added


def test_a_corrupted_pooled_shard_fails_its_checksum_and_verify_repairs_it(stores, tmp_path):
    out = copy_cache(stores["converted"], tmp_path / "out.h5")
    cache = open_cache(out)
    shard, clean = cache.shard_path("order_0000"), cache.pooled("order_0000", None)
    cache.close()
    with h5py.File(shard, "r") as f:
        offset = f["videos"]["order_0000"]["spatial"].id.get_chunk_info(0).byte_offset
    with open(shard, "r+b") as f:
        f.seek(offset + 64)
        f.write(np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes())
    with pytest.raises(BadTokens, match=rf"{shard.name}: video 'order_0000': unreadable tokens"):
        open_cache(out).pooled("order_0000", None)
    repaired = extract(stores["raw"], out, store="pooled", verify=True)
    assert repaired.notes[0].startswith(f"{shard}: video 'order_0000' is unreadable (") and repaired.extracted == 8
    again = open_cache(out).pooled("order_0000", None)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(again, clean))


def test_an_interrupted_pooled_extraction_resumes_every_video_exactly_once(stores, video_copy, tiny_llava, tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "out.h5"
    real_add, calls = ShardWriter.add_pooled, []

    def add_then_killed(self, video_id, pooled, attrs):
        done = real_add(self, video_id, pooled, attrs)
        calls.append(video_id)
        if len(calls) == 5:  # written into the open shard, then killed
            raise KeyboardInterrupt
        return done

    monkeypatch.setattr(ShardWriter, "add_pooled", add_then_killed)
    with pytest.raises(KeyboardInterrupt):
        extract(video_copy, out, tiny_llava, store="pooled", shard_size="10KB")  # two videos per shard
    gc.collect()  # the killed run's open shard handle, as the process's end would close it
    assert len(list(shards_dir(out).glob(".tmp-*"))) == 1 and len(list(shards_dir(out).glob("r*.h5"))) == 2
    monkeypatch.setattr(ShardWriter, "add_pooled", real_add)
    again = extract(video_copy, out, tiny_llava, store="pooled", shard_size="10KB")
    assert (again.already_cached, again.extracted) == (4, 4) and not list(shards_dir(out).glob(".tmp-*"))
    names = []
    for path in shards_dir(out).glob("r*.h5"):
        with h5py.File(path, "r") as f:
            names += list(f["videos"])
    assert sorted(names) == sorted(set(names)) and len(names) == 8
    resumed, clean = open_cache(out), open_cache(stores["pooled"])
    for video_id in clean:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(resumed.pooled(video_id, None),
                                                              clean.pooled(video_id, None)))


def test_training_skips_a_pooled_video_that_is_not_finite_as_it_does_in_a_raw_cache(stores, qa_file, tiny_llava,
                                                                                    tmp_path):
    out = copy_cache(stores["converted"], tmp_path / "out.h5")
    shard = open_cache(out).shard_path("order_0001")
    with h5py.File(shard, "r+") as f:  # h5py recomputes the checksum: only the finite check sees it
        spatial = f["videos"]["order_0001"]["spatial"]
        spatial[0, :5] = np.nan
    cfg = dict(model=str(tiny_llava), batch_size=4, max_steps=1, num_workers=0, device="cpu")
    summary = run_train(TrainConfig(str(out), str(qa_file), str(tmp_path / "run"), **cfg))
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())["bad_videos"]
    assert summary.skipped_videos == 1 and all(np.isfinite(summary.losses))
    assert [(s["video_id"], s["shard"], s["why"]) for s in skipped] == [
        ("order_0001", str(shard), "5 of 3136 token values are not finite")]
    with pytest.raises(UserError, match=r"video 'order_0001': 5 of 3136 token values are not finite.*--strict"):
        run_train(TrainConfig(str(out), str(qa_file), str(tmp_path / "strict"), strict=True, **cfg))
