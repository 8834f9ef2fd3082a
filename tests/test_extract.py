"""Stage one through the library API: round trip, provenance, resume, refusal, odd paths."""

import shutil

import numpy as np
import pytest
import torch

from redvillm import open_cache
from redvillm.errors import UserError
from redvillm.extract.config import ExtractConfig
from redvillm.extract.decode import DecodeSettings, decode_video
from redvillm.extract.pipeline import encode_frames, run_extract
from redvillm.extract.sampling import sample_indices
from redvillm.families.registry import load_family


def extract(videos, out, model, **overrides):
    settings = dict(num_frames=16, decode_workers=1, device="cpu", dtype="float32", batch_size=8)
    return run_extract(ExtractConfig(str(videos), str(out), model=str(model), **{**settings, **overrides}))


def test_round_trip_tokens_and_provenance(video_copy, tiny_llava, tmp_path):
    summary = extract(video_copy, tmp_path / "out.h5", tiny_llava)
    assert (summary.found, summary.extracted, summary.failures) == (8, 8, [])
    cache = open_cache(tmp_path / "out.h5")
    assert sorted(cache) == sorted(p.stem for p in video_copy.glob("*.mp4"))
    info = cache.info
    assert info["family"] == "llava" and info["num_frames"] == 16
    assert (info["num_patches"], info["hidden_size"]) == (49, 64)
    assert info["vision"]["vision_feature_layer"] == -2
    assert info["vision"]["vision_feature_select_strategy"] == "default"
    assert info["image_size"] == [224, 224] and info["storage_dtype"] == "float16"
    assert cache.extract_config["num_frames"] == 16

    video_id = "order_0000"
    tokens = cache[video_id]
    assert tokens.shape == (16, 49, 64) and tokens.dtype == np.float16
    meta = cache.meta(video_id)
    assert meta["frame_indices"] == sample_indices(24, 16).tolist()
    assert (meta["source_frames"], meta["source_fps"], meta["height"], meta["width"]) == (24, 8.0, 96, 96)
    assert meta["duration_s"] == pytest.approx(3.0)

    # Same tokens as decoding and encoding that one video by hand.
    family = load_family(str(tiny_llava))
    encoder = family.load_frame_encoder(torch.device("cpu"), torch.float32)
    spec = family.frame_preprocess()
    frames, _ = decode_video(video_copy / f"{video_id}.mp4", DecodeSettings(16, "uniform", "repeat", spec))
    expected = encode_frames(encoder, torch.from_numpy(frames), 5, torch.device("cpu"), torch.float32, spec)
    np.testing.assert_array_equal(tokens, expected)


def test_rerun_skips_cached_videos_and_adds_new_ones(video_copy, tiny_llava, tmp_path):
    out = tmp_path / "out.h5"
    extract(video_copy, out, tiny_llava)
    again = extract(video_copy, out, tiny_llava)
    assert (again.already_cached, again.extracted, again.frames) == (8, 0, 0)  # no vision work
    shutil.copy(video_copy / "order_0000.mp4", video_copy / "extra clip.mp4")
    third = extract(video_copy, out, tiny_llava)
    assert (third.already_cached, third.extracted) == (8, 1)
    cache = open_cache(out)
    assert len(cache) == 9
    np.testing.assert_array_equal(cache["extra clip"], cache["order_0000"])


def test_refuses_a_cache_made_with_other_settings(video_copy, tiny_llava, tmp_path):
    out = tmp_path / "out.h5"
    extract(video_copy, out, tiny_llava)
    with pytest.raises(UserError, match="num_frames is 16 there, 8 here.*--overwrite"):
        extract(video_copy, out, tiny_llava, num_frames=8)
    replaced = extract(video_copy, out, tiny_llava, num_frames=8, overwrite=True)
    assert replaced.extracted == 8 and open_cache(out)["order_0000"].shape[0] == 8


def test_unicode_and_spaces_in_paths(synthetic_videos, tiny_llava, tmp_path):
    videos = tmp_path / "vidéos 视频 dir"
    videos.mkdir()
    shutil.copy(synthetic_videos / "order_0000.mp4", videos / "клип 1 猫.mp4")
    out_dir = tmp_path / "out dir ü"
    out_dir.mkdir()
    extract(videos, out_dir / "cache ü.h5", tiny_llava)
    cache = open_cache(out_dir / "cache ü.h5")
    assert list(cache) == ["клип 1 猫"]
    assert cache.meta("клип 1 猫")["path"].endswith("клип 1 猫.mp4")


def test_video_list_files_and_duplicate_ids(synthetic_videos, tiny_llava, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two videos\n{synthetic_videos / 'order_0000.mp4'}\n\n{synthetic_videos / 'direction_0001.mp4'}\n")
    summary = extract(listing, tmp_path / "a.h5", tiny_llava)
    assert summary.extracted == 2
    for sub in ("a", "b"):
        (tmp_path / "dups" / sub).mkdir(parents=True)
        shutil.copy(synthetic_videos / "order_0000.mp4", tmp_path / "dups" / sub / "same.mp4")
    with pytest.raises(UserError, match="duplicate video id 'same'"):
        extract(tmp_path / "dups", tmp_path / "b.h5", tiny_llava)
    assert not (tmp_path / "b.h5").exists()


def test_short_video_policies(synthetic_videos, tiny_llava, tmp_path):
    repeat = open_cache(_one(synthetic_videos, tiny_llava, tmp_path / "r.h5", "repeat"))
    keep = open_cache(_one(synthetic_videos, tiny_llava, tmp_path / "k.h5", "keep"))
    assert repeat["order_0000"].shape[0] == 40 and keep["order_0000"].shape[0] == 24  # video has 24
    rows = repeat.meta("order_0000")["frame_indices"]
    np.testing.assert_array_equal(repeat["order_0000"], keep["order_0000"][rows])  # repeats are real frames


def _one(videos, model, out, policy):
    extract(videos / "order_0000.mp4", out, model, num_frames=40, short_videos=policy)
    return out


def test_manual_shards_partition_and_reindex(video_copy, tiny_llava, tmp_path):
    out = tmp_path / "out.h5"
    first = extract(video_copy, out, tiny_llava, num_shards=2, shard_index=0)
    second = extract(video_copy, out, tiny_llava, num_shards=2, shard_index=1)
    assert first.extracted + second.extracted == 8 and first.extracted == 4
    assert len(open_cache(out)) == 8


@pytest.mark.gpu
def test_cuda_half_precision_tokens_match_cpu(video_copy, tiny_llava, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    extract(video_copy, tmp_path / "cpu.h5", tiny_llava)
    extract(video_copy, tmp_path / "gpu.h5", tiny_llava, device="cuda", dtype="float16")
    cpu, gpu = open_cache(tmp_path / "cpu.h5"), open_cache(tmp_path / "gpu.h5")
    assert gpu.info["compute_dtype"] == "float16"
    for video_id in cpu:
        np.testing.assert_allclose(gpu[video_id].astype(np.float32), cpu[video_id].astype(np.float32), atol=2e-2)
