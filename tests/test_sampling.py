"""Frame index rules (extract/sampling.py)."""

import numpy as np
import pytest

from redvillm.extract.sampling import sample_indices


def videochatgpt_reference(total_num_frames, desired_num_frames):
    # Video-ChatGPT's get_seq_frames, restated: the oracle for the "videochatgpt" rule.
    seg_size = float(total_num_frames - 1) / desired_num_frames
    seq = []
    for i in range(desired_num_frames):
        start = int(np.round(seg_size * i))
        end = int(np.round(seg_size * (i + 1)))
        seq.append((start + end) // 2)
    return seq


@pytest.mark.parametrize("total", [100, 101, 137, 1000, 30001])
def test_uniform_takes_segment_midpoints_distinct_and_in_range(total):
    idx = sample_indices(total, 100)
    assert len(idx) == 100
    assert np.all(np.diff(idx) > 0)
    assert idx[0] >= 0 and idx[-1] < total
    expected = [int((i + 0.5) * total / 100) for i in range(100)]
    assert idx.tolist() == expected


def test_uniform_is_fps_agnostic_only_frame_count_matters():
    assert sample_indices(300, 10).tolist() == [15, 45, 75, 105, 135, 165, 195, 225, 255, 285]


@pytest.mark.parametrize("total", [100, 250, 1234, 7])
def test_videochatgpt_rule_matches_reference(total):
    expected = videochatgpt_reference(total, min(total, 100))
    if total >= 100:  # their exact indices, repeats included
        assert sample_indices(total, 100, "videochatgpt").tolist() == expected
    else:  # shorter than T: their frames, each once, under the keep policy
        assert sample_indices(total, 100, "videochatgpt", "keep").tolist() == sorted(set(expected))


def test_short_video_repeat_fills_t_rows_with_real_frames():
    idx = sample_indices(7, 20, short_videos="repeat")
    assert len(idx) == 20
    assert set(idx.tolist()) == set(range(7))  # every frame used, nothing invented
    assert np.all(np.diff(idx) >= 0)


def test_short_video_keep_returns_each_frame_once():
    assert sample_indices(7, 20, short_videos="keep").tolist() == list(range(7))


def test_single_frame_video_and_bad_arguments():
    assert sample_indices(1, 5).tolist() == [0] * 5
    with pytest.raises(ValueError):
        sample_indices(0, 5)
    with pytest.raises(ValueError):
        sample_indices(10, 5, rule="random")
