"""Storage faults of stage one: every one is detected and named, never read back as numbers."""

import shutil

import h5py
import numpy as np
import pytest

from redvillm import open_cache
from redvillm.cache import BadTokens, shards_dir
from redvillm.extract import pipeline
from redvillm.extract.config import ExtractConfig
from redvillm.extract.pipeline import run_extract

VIDEO = "order_0000"


def extract(videos, out, model, **overrides):
    settings = dict(num_frames=8, decode_workers=1, device="cpu", dtype="float32", batch_size=8)
    return run_extract(ExtractConfig(str(videos), str(out), model=str(model), **{**settings, **overrides}))


@pytest.fixture(scope="module")
def made_cache(synthetic_videos, tiny_llava, tmp_path_factory):
    out = tmp_path_factory.mktemp("made") / "out.h5"
    extract(synthetic_videos, out, tiny_llava)
    return out


@pytest.fixture
def cache_copy(made_cache, tmp_path):
    """A private copy of a freshly extracted cache (tests damage it)."""
    out = tmp_path / "out.h5"
    shutil.copy(made_cache, out)
    shutil.copytree(shards_dir(made_cache), shards_dir(out))
    return out


def data_offset(shard, video_id):
    """Byte offset in the shard file of the video's first block of tokens."""
    with h5py.File(shard, "r") as f:
        dataset = f["videos"][video_id]
        if dataset.chunks is None:
            return dataset.id.get_offset()
        return dataset.id.get_chunk_info(0).byte_offset


def test_a_nan_written_into_a_shard_is_refused_on_read(cache_copy):
    cache = open_cache(cache_copy)
    shard = cache.shard_path(VIDEO)
    cache.close()
    with h5py.File(shard, "r+") as f:  # h5py recomputes the checksum: only the finite check sees it
        tokens = f["videos"][VIDEO][()]
        tokens[3, 5] = np.nan
        f["videos"][VIDEO][...] = tokens
    cache = open_cache(cache_copy)
    with pytest.raises(BadTokens, match=rf"{shard.name}.*'{VIDEO}'.*64 of \d+ token values are not finite") as err:
        cache[VIDEO]
    assert (err.value.video_id, err.value.shard) == (VIDEO, str(shard))
    others = [v for v in cache if v != VIDEO]
    assert all(np.isfinite(cache[v]).all() for v in others)  # the rest of the shard is still served


def test_random_bytes_in_a_shard_fail_the_read_instead_of_becoming_tokens(cache_copy):
    cache = open_cache(cache_copy)
    shard, clean = cache.shard_path(VIDEO), cache[VIDEO]
    cache.close()
    offset = data_offset(shard, VIDEO)
    noise = np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes()
    with open(shard, "r+b") as f:
        f.seek(offset + 64)
        f.write(noise)
    with pytest.raises(BadTokens, match=rf"'{VIDEO}'.*unreadable tokens"):
        print(open_cache(cache_copy)[VIDEO] - clean)  # on a cache without checksums: wrong numbers


class _Overflowing:
    """The tiny encoder, but its first video's output overflows float16 at one value."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def __call__(self, pixel_values):
        out = self.encoder(pixel_values)  # (b, N, D), float32: finite
        self.calls += 1
        if self.calls == 1:
            out = out.clone()
            out[0, 0, 0] = 1e5  # finite in float32, inf once stored as float16
        return out


@pytest.mark.parametrize("store", ["raw", "pooled"])
def test_tokens_that_overflow_float16_are_recorded_as_a_failure_not_stored(video_copy, tiny_llava, tmp_path,
                                                                            monkeypatch, store):
    real = pipeline.load_family

    def patched(*args, **kwargs):
        family = real(*args, **kwargs)
        load = family.load_frame_encoder
        family.load_frame_encoder = lambda device, dtype: _Overflowing(load(device, dtype))
        return family

    monkeypatch.setattr(pipeline, "load_family", patched)
    out = tmp_path / "out.h5"
    summary = extract(video_copy, out, tiny_llava, store=store)  # batch 8 = T: one encoder call per video, sorted ids
    first = sorted(p.stem for p in video_copy.glob("*.mp4"))[0]
    assert [f.video_id for f in summary.failures] == [first]
    assert "1 of 25088 token values are not finite" in summary.failures[0].reason
    cache = open_cache(out)
    assert first not in cache and len(cache) == 7
    assert all(np.isfinite(cache.pooled(v, None)[0] if store == "pooled" else cache[v]).all() for v in cache)


def test_shards_carry_the_checksum_and_a_cache_without_it_still_reads(cache_copy):
    cache = open_cache(cache_copy)
    expected = {v: cache[v] for v in cache}
    shard = cache.shard_path(VIDEO)
    cache.close()
    with h5py.File(shard, "r") as f:
        assert f.attrs["checksum"] == "fletcher32" and f["videos"][VIDEO].fletcher32
        assert f["videos"][VIDEO].chunks == (1, 49, 64)
    _rewrite_as_first_format(cache_copy)
    old = open_cache(cache_copy)
    assert sorted(old) == sorted(expected)
    for video_id, tokens in expected.items():
        np.testing.assert_array_equal(old[video_id], tokens)


def test_resuming_a_first_release_cache_mixes_shards_and_says_so(cache_copy, synthetic_videos, tiny_llava, tmp_path):
    _rewrite_as_first_format(cache_copy)
    videos = tmp_path / "videos"
    shutil.copytree(synthetic_videos, videos)
    shutil.copy(videos / f"{VIDEO}.mp4", videos / "~new.mp4")
    assert extract(videos, cache_copy, tiny_llava).extracted == 1
    cache = open_cache(cache_copy)
    assert len(cache) == 9
    np.testing.assert_array_equal(cache["~new"], cache[VIDEO])  # escaped name in the new shard
    with h5py.File(cache_copy, "r") as f:
        assert f.attrs["checksum"] == "partial"


def _rewrite_as_first_format(index):
    """The layout of the first release: contiguous datasets, no checksum, names = raw ids."""
    for shard in sorted(shards_dir(index).glob("r*.h5")):
        old = shard.with_name("old-" + shard.name)
        with h5py.File(shard, "r") as src, h5py.File(old, "w") as dst:
            for key in ("format", "format_version", "info"):
                dst.attrs[key] = src.attrs[key]
            for name, dataset in src["videos"].items():
                copy = dst.create_dataset(f"videos/{name}", data=dataset[()])
                copy.attrs.update(dict(dataset.attrs))
        old.replace(shard)
    with h5py.File(index, "r+") as f:
        del f["video_names"], f.attrs["checksum"], f.attrs["dataset_names"]



ODD_NAMES = [".", "..", " leading space", "trailing space ", "~tilde", "a" * 120 + "é" * 60, "new\nline", "50%"]


def test_ids_hdf5_cannot_name_are_escaped_and_given_back_as_the_users(synthetic_videos, tiny_llava, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ODD_NAMES:
        shutil.copy(synthetic_videos / f"{VIDEO}.mp4", videos / f"{name}.mp4")
    shutil.copy(synthetic_videos / f"{VIDEO}.mp4", videos / f"{VIDEO}.mp4")
    out = tmp_path / "out.h5"
    summary = extract(videos, out, tiny_llava)
    assert (summary.extracted, summary.failures) == (len(ODD_NAMES) + 1, [])
    cache = open_cache(out)
    assert sorted(cache) == sorted([*ODD_NAMES, VIDEO])
    for name in ODD_NAMES:
        np.testing.assert_array_equal(cache[name], cache[VIDEO])
        assert cache.meta(name)["path"] == str(videos / f"{name}.mp4")
    again = extract(videos, out, tiny_llava)
    assert (again.already_cached, again.extracted) == (len(ODD_NAMES) + 1, 0)
    from redvillm.train.pooled import PooledStore

    pooled = PooledStore(cache, lambda x: (x.float().mean(1), x.float().mean(0)), "llava")  # (T, D), (N, D)
    pooled.build(set(cache))
    for name in [".", ".."]:
        temporal, spatial = pooled.get(name)
        assert temporal.shape == (8, 64) and spatial.shape == (49, 64)


def test_escaping_is_exact_for_names_no_file_system_gives_us_here():
    from redvillm.cache_names import dataset_name, video_id_of

    latin1 = b"caf\xe9".decode("utf-8", "surrogateescape")  # a non-UTF-8 file name as Python sees it
    for video_id in [*ODD_NAMES, latin1, "a/b", "plain", "~%41"]:
        name = dataset_name(video_id)
        assert video_id_of(name) == video_id and "/" not in name and name not in (".", "..")
        name.encode("utf-8")
    assert dataset_name("v_abc-123 x") == "v_abc-123 x"  # ordinary ids keep their own name


def test_a_second_extraction_into_the_same_out_stops_with_one_line(synthetic_videos, tiny_llava, tmp_path):
    import os
    import subprocess
    import sys

    from redvillm.extract.lock import lock_output

    out = tmp_path / "out.h5"
    command = [sys.executable, "-m", "redvillm.extract", synthetic_videos, out, "--model", tiny_llava,
               "--num-frames", "8", "--decode-workers", "1", "--device", "cpu"]
    with lock_output(out, 0):  # as a first run holding rank 0 would
        second = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200"))
        assert second.returncode == 2, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in second.stderr
        assert f"another redvillm-extract (pid {os.getpid()}) is writing it" in lines[0] and str(out) in lines[0]
        assert not shards_dir(out).exists()  # refused before touching OUT
        other_rank = extract(synthetic_videos, out, tiny_llava, num_shards=2, shard_index=1)  # ranks share OUT
        assert other_rank.extracted == 4
    assert extract(synthetic_videos, out, tiny_llava).extracted == 4  # released: the rest, then the index
    assert len(open_cache(out)) == 8


def test_a_rerun_sets_aside_a_shard_with_a_corrupt_header_and_re_extracts_its_videos(video_copy, tiny_llava,
                                                                                      tmp_path):
    out = tmp_path / "out.h5"
    extract(video_copy, out, tiny_llava, shard_size="60KB")  # several shards
    before = open_cache(out)
    shards = sorted(shards_dir(out).glob("r*.h5"))
    assert len(shards) >= 3
    lost = sorted(v for v in before if before.shard_path(v) == shards[1])
    tokens = {v: before[v] for v in before}
    before.close()
    with open(shards[1], "r+b") as f:
        f.write(b"\0" * 512)  # the superblock: `file signature not found`
    noted = []
    again = run_extract(ExtractConfig(str(video_copy), str(out), model=str(tiny_llava), num_frames=8,
                                      decode_workers=1, device="cpu", dtype="float32"), notify=noted.append)
    assert len(noted) == 2 and noted == again.notes and "this run writes about" in noted[1]
    assert noted[0].startswith(f"{shards[1]}: unreadable shard (") and f"{shards[1].name}.damaged" in noted[0]
    assert (again.extracted, again.already_cached) == (len(lost), 8 - len(lost))
    assert shards[1].with_name(shards[1].name + ".damaged").exists()
    cache = open_cache(out)
    assert sorted(cache) == sorted(tokens)
    for video_id, expected in tokens.items():
        np.testing.assert_array_equal(cache[video_id], expected)


@pytest.mark.parametrize("damage", ["truncated", "empty", "deleted"])
def test_a_lost_or_truncated_index_is_rebuilt_without_encoding(cache_copy, synthetic_videos, tiny_llava, damage):
    expected = sorted(open_cache(cache_copy))
    if damage == "deleted":
        cache_copy.unlink()
    else:
        data = cache_copy.read_bytes()
        cache_copy.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    again = extract(synthetic_videos, cache_copy, tiny_llava)
    assert (again.extracted, again.frames, again.already_cached) == (0, 0, 8)
    assert sorted(open_cache(cache_copy)) == expected


def test_a_strangers_file_at_out_is_still_refused(synthetic_videos, tiny_llava, tmp_path):
    from redvillm.errors import UserError

    out = tmp_path / "notes.h5"
    out.write_text("my notes, not a cache\n")
    with pytest.raises(UserError, match="not a readable redvillm cache; move it away"):
        extract(synthetic_videos, out, tiny_llava)
    assert out.read_text() == "my notes, not a cache\n"


def test_verify_sets_aside_a_shard_whose_video_fails_its_checksum(cache_copy, synthetic_videos, tiny_llava):
    cache = open_cache(cache_copy)
    shard, clean = cache.shard_path(VIDEO), cache[VIDEO]
    cache.close()
    with open(shard, "r+b") as f:
        f.seek(data_offset(shard, VIDEO) + 64)
        f.write(b"\xff" * 256)
    plain = extract(synthetic_videos, cache_copy, tiny_llava)  # header fine: a plain rerun trusts the shard
    assert (plain.extracted, plain.notes) == (0, [])
    verified = extract(synthetic_videos, cache_copy, tiny_llava, verify=True)
    assert len(verified.notes) == 2 and verified.notes[0].startswith(f"{shard}: video {VIDEO!r} is unreadable (")
    assert verified.notes[0].endswith(f"set aside as {shard.name}.damaged, its videos are extracted again")
    assert verified.extracted == 8  # one shard held them all
    np.testing.assert_array_equal(open_cache(cache_copy)[VIDEO], clean)


def test_a_full_disk_mid_run_ends_in_one_line_and_the_run_resumes(video_copy, tiny_llava, tmp_path, monkeypatch):
    import errno

    from redvillm.errors import UserError
    from redvillm.extract.store import ShardWriter

    real_add, calls = ShardWriter.add, []

    def add_then_disk_full(self, video_id, tokens, attrs):
        done = real_add(self, video_id, tokens, attrs)
        calls.append(video_id)
        if len(calls) == 5:  # written into the open shard, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return done

    monkeypatch.setattr(ShardWriter, "add", add_then_disk_full)
    out = tmp_path / "out.h5"
    with pytest.raises(UserError) as err:
        extract(video_copy, out, tiny_llava, shard_size="60KB")  # 2 videos of 50 KB per shard
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{shards_dir(out)}: disk full (")
    assert "the 4 videos left need about 200.7 KB more; free space and rerun the same command" in message
    shards = sorted(p.name for p in shards_dir(out).iterdir() if p.suffix == ".h5")
    assert shards == ["r000-00000.h5", "r000-00001.h5"]  # complete shards kept, the torn one gone
    monkeypatch.setattr(ShardWriter, "add", real_add)
    again = extract(video_copy, out, tiny_llava, shard_size="60KB")
    assert (again.already_cached, again.extracted) == (4, 4)
    cache = open_cache(out)
    assert len(cache) == 8 and all(np.isfinite(cache[v]).all() for v in cache)


def test_a_run_the_disk_cannot_hold_is_refused_before_it_starts(synthetic_videos, tiny_llava, tmp_path,
                                                              monkeypatch):
    import re
    from collections import namedtuple

    from redvillm.errors import UserError
    from redvillm.extract import space

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: usage(1e9, 1e9, 300e3))
    out = tmp_path / "out.h5"
    estimate = "this run writes about 401.4 KB (8 videos x T 8 x N 49 x D 64 x 2 bytes); 300.0 KB free there"
    with pytest.raises(UserError, match=re.escape(estimate) + ": not enough; free 101.4 KB or more.*--no-space-check"):
        extract(synthetic_videos, out, tiny_llava)
    assert not list(shards_dir(out).glob("*.h5"))
    started = extract(synthetic_videos, out, tiny_llava, no_space_check=True)
    assert started.extracted == 8 and started.notes == [f"{shards_dir(out)}: {estimate}"]


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KB tmpfs (needs root or CAP_SYS_ADMIN; skipped with the reason otherwise)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip()}); "
                    "the injected-ENOSPC test covers the same path")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_gives_one_line_not_a_crash_and_resumes(small_disk, video_copy, tiny_llava):
    import os
    import subprocess
    import sys

    out = small_disk / "out.h5"
    command = [sys.executable, "-m", "redvillm.extract", video_copy, out, "--model", tiny_llava, "--num-frames", "8",
               "--decode-workers", "1", "--device", "cpu", "--shard-size", "60KB"]

    def run(*extra):
        return subprocess.run(list(map(str, command + list(extra))), capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="300"))

    refused = run()
    assert refused.returncode == 2 and "this run writes about 401.4 KB" in refused.stderr
    assert "not enough" in refused.stderr and not list(shards_dir(out).glob("*.h5"))
    full = run("--no-space-check")
    assert full.returncode == 2, full.stderr  # not 139 (segfault)
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{shards_dir(out)}: disk full" in errors[0] and "videos left need about" in errors[0]
    assert "Traceback" not in full.stderr and "HDF5" not in full.stderr
    assert f"{shards_dir(out)}: this run writes about 401.4 KB" in full.stderr  # printed when not refused too
    kept = sorted(shards_dir(out).glob("r*.h5"))
    assert kept and not list(shards_dir(out).glob(".tmp-*"))
    still_full = run()  # rerun before freeing space: refused up front, in one line
    assert still_full.returncode == 2 and "Traceback" not in still_full.stderr
    assert [line for line in still_full.stderr.splitlines() if line.startswith("error: ")][0].endswith(
        "or pass --no-space-check to start anyway")
    subprocess.run(["mount", "-o", "remount,size=2m", str(small_disk)], check=True)  # space is freed
    resumed = run()
    assert resumed.returncode == 0, resumed.stderr
    cache = open_cache(out)
    assert len(cache) == 8 and all(np.isfinite(cache[v]).all() for v in cache)


def test_a_reader_meeting_a_damaged_shard_names_the_video_and_shard(cache_copy):
    cache = open_cache(cache_copy)
    shard = cache.shard_path(VIDEO)
    cache.close()
    with open(shard, "r+b") as f:
        f.write(b"\0" * 8)  # the HDF5 signature
    with pytest.raises(BadTokens, match=rf"{shard}: video '{VIDEO}': cannot open its shard .*--verify to repair"):
        open_cache(cache_copy)[VIDEO]


def test_a_rerun_sets_aside_a_shard_whose_group_index_is_damaged(cache_copy, synthetic_videos, tiny_llava):
    """Damage to HDF5's own index of a shard's videos (a symbol-table node) makes h5py raise
    RuntimeError, not OSError: the repair scan must treat it as damage like any other."""
    cache = open_cache(cache_copy)
    shard, clean = cache.shard_path(VIDEO), cache[VIDEO]
    cache.close()
    damage_group_index(shard)
    with pytest.raises(BadTokens, match=rf"{shard}: video '{VIDEO}': "):
        open_cache(cache_copy)[VIDEO]
    repaired = extract(synthetic_videos, cache_copy, tiny_llava)
    assert repaired.notes[0].startswith(f"{shard}: unreadable shard (")
    assert repaired.extracted == 8
    np.testing.assert_array_equal(open_cache(cache_copy)[VIDEO], clean)


def damage_group_index(shard):
    """Overwrite the signature of the first symbol-table node whose damage makes listing the
    shard's videos raise RuntimeError (the root group's own node gives KeyError instead)."""
    data = shard.read_bytes()
    at = data.find(b"SNOD")
    while at >= 0:
        shard.write_bytes(data[:at] + b"XXXX" + data[at + 4:])
        try:
            with h5py.File(shard, "r") as f:
                list(f["videos"].keys())
        except RuntimeError:
            return
        except Exception:
            pass
        at = data.find(b"SNOD", at + 4)
    raise AssertionError("no symbol-table node of the shard's video group was found to damage")
