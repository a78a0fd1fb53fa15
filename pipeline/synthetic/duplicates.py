"""Planted near-duplicates, for `vidfeat dedup`'s tests and its precision/recall benchmark.

Each base video (a stretch of one of the demo's sources, demo_set.py) is written five times: the
`original`; `reencoded` at a much lower bitrate (x264 crf 40 instead of 20); `resized` to 3/4 of its
width and height; `trimmed` (its first second cut); `watermarked` (an opaque logo box in a corner, 1/4 of
the width). Each base's demo *partner* (another stretch of the same source: similar, not a duplicate) is
written once, as `partner`, so that a threshold loose enough to group it shows up as lost precision.

    planted = write_duplicate_set(DIR)          # [Planted(path, family, variant)]; family: the base's name
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from pipeline.synthetic.demo_set import SAMPLES, Sample, source_frames

VARIANTS = ("original", "reencoded", "resized", "trimmed", "watermarked")
BASES = {"pattern_30fps.mp4": "pattern_ntsc.mp4", "fractal_30fps.mp4": "fractal_vfr.mp4",
         "automaton_rule30.mp4": "automaton_rule90.mp4", "life_portrait_a.mp4": "life_portrait_b.mp4"}


@dataclass(frozen=True)
class Planted:
    path: str
    family: str          # the base video's name: videos of one family are duplicates of each other
    variant: str         # one of VARIANTS, or "partner" (its own family: similar, not a duplicate)


def write_duplicate_set(out_dir: str, seconds: float = 4.0, bases: int = len(BASES)) -> list[Planted]:
    """Write the first `bases` bases' variants and partners under `out_dir` (module doc)."""
    os.makedirs(out_dir, exist_ok=True)
    named = {s.name: s for s in SAMPLES}
    planted = []
    for base, partner in list(BASES.items())[:bases]:
        sample = replace(named[base], vfr=False)
        frames = _frames(sample, seconds)
        for variant in VARIANTS:
            path = os.path.join(out_dir, f"{base[:-4]}-{variant}.mp4")
            planted.append(Planted(_write(path, *variant_frames(frames, variant, sample.fps)), base, variant))
        other = replace(named[partner], vfr=False)
        path = os.path.join(out_dir, f"{partner[:-4]}-partner.mp4")
        planted.append(Planted(_write(path, _frames(other, seconds), other.fps, 20), partner, "partner"))
    return planted


def variant_frames(frames: np.ndarray, variant: str, fps: float) -> tuple[np.ndarray, float, int]:
    """(frames uint8 [T, H, W, 3], fps, x264 crf) of one variant of `frames`."""
    if variant == "reencoded":
        return frames, fps, 40
    if variant == "resized":
        return _resize(frames, frames.shape[1] * 3 // 8 * 2, frames.shape[2] * 3 // 8 * 2), fps, 20
    if variant == "trimmed":
        return frames[round(fps):], fps, 20
    if variant == "watermarked":
        marked = frames.copy()
        h, w = frames.shape[1:3]
        marked[:, h - h // 6 - 4:h - 4, w - w // 4 - 4:w - 4] = (240, 240, 240)
        marked[:, h - h // 8 - 6:h - 8, w - w // 4:w - w // 8] = (30, 30, 160)
        return marked, fps, 20
    return frames, fps, 20


def _frames(sample: Sample, seconds: float) -> np.ndarray:
    return np.stack(list(source_frames(sample, round(seconds * sample.fps))))


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    import av

    out = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(width, height).to_ndarray() for f in frames]
    return np.stack(out)


def _write(path: str, frames: np.ndarray, fps: float, crf: int) -> str:
    """frames uint8 [T, H, W, 3] → an H.264 (yuv420p) mp4 at `path`."""
    import av

    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                options={"crf": str(crf), "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def pair_quality(group_of: dict[str, int], family_of: dict[str, str]) -> tuple[float, float]:
    """(precision, recall) over pairs of videos: a found pair is two videos in one group (`group_of`:
    video → group; videos in no group absent), a true pair two of one family (`family_of`, every video).
    Precision is 1.0 when nothing was found."""
    found = _pairs(group_of)
    true = _pairs(family_of)
    hits = len(found & true)
    return (hits / len(found) if found else 1.0), (hits / len(true) if true else 1.0)


def _pairs(label_of: dict) -> set[tuple[str, str]]:
    members: dict = {}
    for video, label in label_of.items():
        members.setdefault(label, []).append(video)
    return {(a, b) for group in members.values() for a in group for b in group if a < b}
