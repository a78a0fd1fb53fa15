"""The sample videos of `vidfeat demo`: FFmpeg's test sources, in similar pairs.

Four pairs of short videos, each pair two stretches of one moving source (FFmpeg's `testsrc2` test
pattern, a zooming `mandelbrot` set, the Game of `life` with two seeds, `cellauto` automata under two
rules), so that the report's neighbour gallery shows recognisable pictures and even the random-weight
`tiny` model puts each video next to its pair. Between them they still cover what sampling must get
right: 30 fps, NTSC 30000/1001, a variable frame rate and a portrait 25 fps video.

The frames come from PyAV's own FFmpeg filter graph (no ffmpeg command needed) and are encoded with
libx264 (yuv420p, B-frames), as most of a crawled corpus is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline.synthetic.samples import add_stream, frame_pts

SECONDS = 8.0
_VFR = [1 / 30 if i % 3 else 1 / 12 for i in range(1, 400)]   # frame gaps of a variable-rate video


@dataclass(frozen=True)
class Sample:
    name: str              # file name
    source: str            # an FFmpeg source filter and its options ({w}, {h}, {r} filled in)
    fps: float
    width: int = 160
    height: int = 120
    skip: int = 0          # source frames dropped first: the second of a pair shows a later stretch
    vfr: bool = False

    def timestamps(self) -> list[float]:
        if not self.vfr:
            return [i / self.fps for i in range(round(SECONDS * self.fps))]
        times = list(np.cumsum([0.0] + _VFR))
        return [t for t in times if t < SECONDS]


SAMPLES = (
    Sample("pattern_30fps.mp4", "testsrc2=size={w}x{h}:rate={r}", 30.0),
    Sample("pattern_ntsc.mp4", "testsrc2=size={w}x{h}:rate={r}", 30000 / 1001, skip=240),
    Sample("fractal_30fps.mp4", "mandelbrot=size={w}x{h}:rate={r}", 30.0),
    Sample("fractal_vfr.mp4", "mandelbrot=size={w}x{h}:rate={r}", 30.0, skip=120, vfr=True),
    Sample("life_portrait_a.mp4", "life=size={w}x{h}:rate={r}:seed=1:mold=10:ratio=0.3:"
                                  "life_color=#40ff40:death_color=#a02020:mold_color=#202060", 25.0, 96, 160),
    Sample("life_portrait_b.mp4", "life=size={w}x{h}:rate={r}:seed=7:mold=10:ratio=0.3:"
                                  "life_color=#40ff40:death_color=#a02020:mold_color=#202060", 25.0, 96, 160),
    Sample("automaton_rule30.mp4", "cellauto=size={w}x{h}:rate={r}:rule=30:random_fill_ratio=0.5:seed=3", 30.0),
    Sample("automaton_rule90.mp4", "cellauto=size={w}x{h}:rate={r}:rule=90:random_fill_ratio=0.5:seed=5", 30.0),
)


def write_demo_set(out_dir: str) -> list[str]:
    """Write the demo's sample videos (SAMPLES) to `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    return [write_sample(os.path.join(out_dir, s.name), s) for s in SAMPLES]


def write_sample(path: str, sample: Sample) -> str:
    """Encode `sample`'s frames (one per timestamp) to `path`."""
    import av

    times = sample.timestamps()
    pts = frame_pts(len(times), sample.fps, times)
    with av.open(path, "w") as out:
        stream = add_stream(out, sample.fps, sample.width, sample.height, lossless=False, bframes=2,
                            gop=60, codec="libx264", open_gop=False)
        for i, rgb in enumerate(source_frames(sample, len(times))):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = pts[i], stream.time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def source_frames(sample: Sample, count: int) -> Iterator[np.ndarray]:
    """`count` RGB frames of `sample`'s source filter, after its first `skip`."""
    import av

    graph = av.filter.Graph()
    args = sample.source.format(w=sample.width, h=sample.height, r=round(sample.fps, 3))
    name, _, options = args.partition("=")
    chain = [graph.add(name, options), graph.add("format", "rgb24"), graph.add("buffersink")]
    chain[0].link_to(chain[1])
    chain[1].link_to(chain[2])
    graph.configure()
    for i in range(sample.skip + count):
        frame = chain[2].pull()
        if i >= sample.skip:
            yield frame.to_ndarray()
