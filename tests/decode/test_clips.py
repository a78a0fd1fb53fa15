"""The clip plan: exhaustive properties over frame rates, lengths around clip boundaries, VFR."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.decode.clips import cfr_timestamps, frames_at, num_samples, plan_cfr, plan_clips
from pipeline.config import SamplingConfig

FPS = [23.976, 24000 / 1001, 24, 25, 29.97, 30000 / 1001, 30, 50, 59.94, 60]
DEFAULT = SamplingConfig()
SMALL = SamplingConfig(num_frames=4, stride=8, target_fps=30)


def _frame_shown(t: float, fps: float, n: int) -> int:
    """Reference: the frame on screen at t, by exact rational arithmetic on a rounded fps."""
    from fractions import Fraction

    f = Fraction(fps).limit_denominator(100000)
    i = math.floor(Fraction(t).limit_denominator(10**9) * f + Fraction(1, 10**7))
    return min(max(i, 0), n - 1)


def _check_plan(clips, n_frames: int, duration: float, sampling: SamplingConfig) -> None:
    interval = sampling.interval_s
    total = num_samples(duration, interval)
    assert [c.index for c in clips] == list(range(len(clips)))
    assert len(clips) == math.ceil(total / sampling.num_frames)
    assert sum(c.valid_frames for c in clips) == total
    for c in clips:
        assert len(c.frame_indices) == len(c.sample_times) == sampling.num_frames
        assert 1 <= c.valid_frames <= sampling.num_frames
        assert all(0 <= i < n_frames for i in c.frame_indices)
        assert list(c.frame_indices) == sorted(c.frame_indices)
        assert c.start_s == pytest.approx(c.index * sampling.num_frames * interval)
        assert c.start_s < c.end_s <= duration + 1e-9
    for c in clips[:-1]:
        assert c.valid_frames == sampling.num_frames
    last = clips[-1]
    assert all(i == n_frames - 1 for i in last.frame_indices[last.valid_frames:])
    assert last.end_s == pytest.approx(min(total * interval, duration))


@pytest.mark.parametrize("fps", FPS)
@pytest.mark.parametrize("sampling", [DEFAULT, SMALL], ids=["96x32", "4x8"])
def test_cfr_plans_around_clip_boundaries(fps, sampling):
    interval = sampling.interval_s
    for k in (1, 2, 3):
        for samples in (sampling.num_frames * k - 1, sampling.num_frames * k, sampling.num_frames * k + 1):
            # lengths whose sample count is exactly `samples`, and one frame either side of that
            n_exact = math.ceil((samples - 1) * interval * fps + 1e-9) + 1
            for n in {max(1, n_exact - 1), n_exact, n_exact + 1}:
                clips = plan_cfr(n, fps, sampling)
                _check_plan(clips, n, n / fps, sampling)
                k_all = [i for c in clips for i in c.frame_indices[: c.valid_frames]]
                times = [t for c in clips for t in c.sample_times[: c.valid_frames]]
                assert k_all == [_frame_shown(t, fps, n) for t in times]


@pytest.mark.parametrize("fps,per_interval", [(30, 32), (60, 64), (15, 16)])
def test_sample_count_at_exact_multiples(fps, per_interval):
    # a video lasting exactly k intervals has exactly k samples, despite float error
    assert plan_cfr(per_interval, fps)[0].valid_frames == 1
    assert plan_cfr(per_interval + 1, fps)[0].valid_frames == 2
    assert plan_cfr(per_interval * 96, fps)[0].valid_frames == 96
    assert len(plan_cfr(per_interval * 96, fps)) == 1
    assert len(plan_cfr(per_interval * 96 + 1, fps)) == 2


def test_default_sampling_hits_every_32nd_frame_at_30fps():
    clips = plan_cfr(30 * 600, 30)          # ten minutes
    indices = [i for c in clips for i in c.frame_indices[: c.valid_frames]]
    assert indices == list(range(0, 30 * 600, 32))
    assert clips[0].end_s == pytest.approx(102.4)
    assert clips[-1].end_s == pytest.approx(600.0)


def test_one_frame_video_gives_one_padded_clip():
    for fps in FPS:
        (clip,) = plan_cfr(1, fps, SMALL)
        assert clip.frame_indices == (0, 0, 0, 0)
        assert clip.valid_frames == 1
        assert clip.start_s == 0 and clip.end_s == pytest.approx(1 / fps)


def test_video_shorter_than_an_interval():
    (clip,) = plan_cfr(10, 30, DEFAULT)
    assert clip.valid_frames == 1 and set(clip.frame_indices) == {0, 9} and clip.frame_indices[0] == 0
    assert clip.frame_indices[1:] == (9,) * 95


def test_low_frame_rate_repeats_frames():
    # 1 fps: several samples fall on the same frame, each showing the frame on screen
    clips = plan_cfr(5, 1.0, SMALL)          # interval 0.2667 s, 5 s → 19 samples
    flat = [i for c in clips for i in c.frame_indices[: c.valid_frames]]
    assert len(flat) == 19
    assert flat == [int(k * 8 / 30 + 1e-9) for k in range(19)]


def test_vfr_timestamps_pick_the_frame_on_screen():
    ts = [0.0, 0.05, 0.06, 0.2, 0.5, 0.52, 1.9, 2.0]
    clips = plan_clips(ts, 2.1, SamplingConfig(num_frames=3, stride=3, target_fps=30))  # every 0.1 s
    flat = [i for c in clips for i in c.frame_indices[: c.valid_frames]]
    times = [k * 0.1 for k in range(21)]
    expected = [max(i for i, t0 in enumerate(ts) if t0 <= t + 1e-9) for t in times]
    assert flat == expected
    assert clips[-1].frame_indices[clips[-1].valid_frames:] == (7,) * (3 - clips[-1].valid_frames)
    assert clips[-1].end_s == pytest.approx(2.1)


def test_vfr_timestamps_are_made_relative_to_the_first_frame():
    a = plan_clips([10.0, 10.5, 11.0], 1.5, SMALL)
    b = plan_clips([0.0, 0.5, 1.0], 1.5, SMALL)
    assert a == b


def test_vfr_equals_cfr_for_regular_timestamps():
    for fps in FPS:
        n = 500
        assert plan_clips(cfr_timestamps(n, fps), n / fps, SMALL) == plan_cfr(n, fps, SMALL)


def test_frames_at_clamps_and_tolerates_float_error():
    ts = cfr_timestamps(10, 30000 / 1001)
    assert list(frames_at(np.array([-1.0, 0.0, ts[3] - 1e-9, ts[3], 100.0]), ts)) == [0, 0, 3, 3, 9]


def test_rejects_bad_timestamps():
    with pytest.raises(ValueError):
        plan_clips([], 1.0)
    with pytest.raises(ValueError):
        plan_clips([0.0, 0.1, 0.1], 1.0)
    with pytest.raises(ValueError):
        plan_cfr(0, 30)
