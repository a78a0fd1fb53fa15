"""The clip plan: which source frame each model frame comes from. Pure functions, no I/O.

Sampling follows the paper's long-video protocol. Sample k is taken at time t_k = k · stride / target_fps
seconds after the first frame (one sample every 1.0667 s for stride 32 at 30 fps), whatever the source
frame rate. Sample k shows the source frame that is on screen at t_k: frame i with pts_i ≤ t_k < pts_i+1
(times relative to the first frame). A video lasting `duration_s` (the end of its last frame) has
S = max(1, ceil(duration_s / interval)) samples. They are cut into consecutive, non-overlapping clips of
`num_frames` samples; the last clip is padded with the video's last frame, as the official code does by
clamping indices past the end, and says how many of its samples are real (`valid_frames`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.config import SamplingConfig

# Tolerance for float error in times (seconds): far below any frame duration, far above rounding noise
# of k·interval or of container timestamps converted to seconds (29.97 fps, 1/90000 time bases).
EPS_S = 1e-6


@dataclass(frozen=True)
class ClipSpec:
    """One clip of the plan.

    index:          0-based position of the clip in the video.
    frame_indices:  source frame (0-based, presentation order) for each of the `num_frames` samples.
    sample_times:   nominal time t_k of each sample, seconds from the first frame; padding samples keep
                    their nominal times, which lie past the end of the video.
    start_s:        time of the clip's first sample.
    end_s:          end of the last real sample's interval, capped at the video's duration.
    valid_frames:   how many samples are real; the rest repeat the video's last frame.

    Worked example: a 30 fps video of 100 frames (3.333 s) with num_frames=2, stride=32, target_fps=30
    (interval 1.0667 s) has ceil(3.333 / 1.0667) = 4 samples at 0, 1.0667, 2.1333, 3.2 s → frames
    0, 32, 64, 96 → two clips:
        ClipSpec(index=0, frame_indices=(0, 32), start_s=0.0, end_s=2.1333, valid_frames=2)
        ClipSpec(index=1, frame_indices=(64, 96), start_s=2.1333, end_s=3.3333, valid_frames=2)
    With 70 frames (2.333 s, 3 samples) the second clip is (64, 69) with valid_frames=1: its padding
    repeats frame 69, the last one.
    """

    index: int
    frame_indices: tuple[int, ...]
    sample_times: tuple[float, ...]
    start_s: float
    end_s: float
    valid_frames: int


def num_samples(duration_s: float, interval_s: float) -> int:
    """S = max(1, ceil(duration_s / interval_s)), robust to float error at exact multiples."""
    return max(1, math.ceil(duration_s / interval_s - EPS_S / interval_s))


def cfr_timestamps(num_frames: int, fps: float) -> np.ndarray:
    """Start time of each frame of a constant-frame-rate video: float64 [num_frames], seconds."""
    if num_frames < 1 or fps <= 0:
        raise ValueError(f"need at least one frame and a positive fps, got {num_frames} frames at {fps} fps")
    return np.arange(num_frames, dtype=np.float64) / float(fps)


def frames_at(times: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each time: the last i with timestamps[i] ≤ t (+EPS_S).

    `timestamps` are sorted frame start times (seconds, first = 0); times before the first frame map to
    frame 0 and times past the end to the last frame (the clamping of the official code). int64 [len(times)].
    """
    idx = np.searchsorted(timestamps, np.asarray(times, dtype=np.float64) + EPS_S, side="right") - 1
    return np.clip(idx, 0, len(timestamps) - 1).astype(np.int64)


def plan_clips(
    timestamps: Sequence[float] | np.ndarray,
    duration_s: float,
    sampling: SamplingConfig | None = None,
) -> list[ClipSpec]:
    """The clips covering a video whose frames start at `timestamps` (seconds, sorted, relative to the
    first frame) and which ends at `duration_s` (end of the last frame). Works for CFR and VFR alike;
    see `plan_cfr` for the constant-rate shortcut."""
    sampling = sampling or SamplingConfig()
    ts = _check_timestamps(timestamps)
    duration_s = max(float(duration_s), float(ts[-1]))
    interval = sampling.interval_s
    total = num_samples(duration_s, interval)
    n_clips = math.ceil(total / sampling.num_frames)
    times = np.arange(n_clips * sampling.num_frames, dtype=np.float64) * interval
    frames = frames_at(times, ts)
    frames[total:] = len(ts) - 1
    return [_clip(c, frames, times, total, duration_s, sampling) for c in range(n_clips)]


def plan_cfr(num_frames: int, fps: float, sampling: SamplingConfig | None = None) -> list[ClipSpec]:
    """`plan_clips` for a constant-frame-rate video of `num_frames` frames at `fps` (duration n / fps)."""
    return plan_clips(cfr_timestamps(num_frames, fps), num_frames / float(fps), sampling)


def _clip(c: int, frames: np.ndarray, times: np.ndarray, total: int, duration_s: float,
          sampling: SamplingConfig) -> ClipSpec:
    lo, hi = c * sampling.num_frames, (c + 1) * sampling.num_frames
    valid = min(hi, total) - lo
    end = min((lo + valid) * sampling.interval_s, duration_s)
    return ClipSpec(
        index=c,
        frame_indices=tuple(int(i) for i in frames[lo:hi]),
        sample_times=tuple(float(t) for t in times[lo:hi]),
        start_s=float(times[lo]),
        end_s=float(end),
        valid_frames=int(valid),
    )


def _check_timestamps(timestamps) -> np.ndarray:
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1 or len(ts) == 0:
        raise ValueError("need a non-empty 1-D sequence of frame timestamps")
    if np.any(np.diff(ts) <= 0):
        raise ValueError("frame timestamps must be strictly increasing")
    return ts - ts[0]
