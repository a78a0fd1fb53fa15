"""Generated test and demo videos whose pixels carry the frame index, plus deliberately broken files.

Each frame is a 4 × 4 grid of black/white cells holding the 16 bits of its index (most significant bit
top-left, row by row), so `read_frame_index` recovers which source frame a decoded, resized, lossy frame
came from. The cells scale with the frame, so any size or aspect ratio works, and a cell stays readable
after a short-side resize down to 8 px and after H.264 at ordinary quality.

Videos are written with PyAV (which bundles its own FFmpeg): `lossless` uses libx264rgb at crf 0 (decoded
RGB equals `index_frame` exactly), `lossy` uses libx264 with B-frames. Times are seconds; sizes are
width × height as FFmpeg writes them.
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Sequence

import numpy as np

GRID = 4                      # cells per side; GRID² bits of frame index
BITS = GRID * GRID
_TIME_BASE = Fraction(1, 90000)


def index_frame(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """The RGB frame that encodes `index`: uint8 [height, width, 3], each cell 0 or 255."""
    if not 0 <= index < 2**BITS:
        raise ValueError(f"frame index {index} does not fit in {BITS} bits")
    bits = [(index >> (BITS - 1 - b)) & 1 for b in range(BITS)]
    cells = np.array(bits, dtype=np.uint8).reshape(GRID, GRID) * 255
    rows = (np.arange(height) * GRID) // height
    cols = (np.arange(width) * GRID) // width
    frame = cells[rows[:, None], cols[None, :]]
    return np.repeat(frame[:, :, None], 3, axis=2)


def read_frame_index(frame: np.ndarray) -> int:
    """The index `index_frame` encoded in `frame` (uint8 [H, W, 3] RGB, any size, lossy or resized).

    Reads the mean of the middle half of each cell and thresholds it at 128.
    """
    height, width = frame.shape[:2]
    gray = np.asarray(frame, dtype=np.float32).mean(axis=2)
    index = 0
    for r in range(GRID):
        for c in range(GRID):
            cell = _cell_centre(gray, r, c, height, width)
            index = (index << 1) | int(cell.mean() >= 128)
    return index


def _cell_centre(gray: np.ndarray, r: int, c: int, height: int, width: int) -> np.ndarray:
    y0, y1 = r * height / GRID, (r + 1) * height / GRID
    x0, x1 = c * width / GRID, (c + 1) * width / GRID
    qy, qx = (y1 - y0) / 4, (x1 - x0) / 4
    ys = slice(int(np.ceil(y0 + qy)), max(int(np.ceil(y0 + qy)) + 1, int(np.floor(y1 - qy))))
    xs = slice(int(np.ceil(x0 + qx)), max(int(np.ceil(x0 + qx)) + 1, int(np.floor(x1 - qx))))
    return gray[ys, xs]


def write_index_video(
    path: str,
    num_frames: int,
    fps: float = 30.0,
    *,
    width: int = 64,
    height: int = 48,
    lossless: bool = False,
    bframes: int = 3,
    gop: int = 24,
    timestamps: Sequence[float] | None = None,
    rotation: int = 0,
    faststart: bool = False,
    codec: str = "libx264",
    open_gop: bool = False,
) -> str:
    """Write a video whose frame i shows `index_frame(i)`; returns `path`.

    `timestamps` (seconds, increasing, first 0) gives a variable frame rate; otherwise frame i is at
    i / fps. `lossless` → libx264rgb crf 0 (exact RGB; width/height may be odd); else libx264 yuv420p
    with `bframes` B-frames (even width/height). `rotation` (degrees counter-clockwise) is written as the
    display matrix; `faststart` moves the mp4 index to the front. `codec` (lossy only): libx264, libx265
    or libvpx-vp9, a keyframe every `gop` frames, closed GOPs unless `open_gop` (x264/x265).
    """
    import av

    pts = frame_pts(num_frames, fps, timestamps)
    options = {"movflags": "+faststart"} if faststart and path.endswith((".mp4", ".mov")) else {}
    with av.open(path, "w", options=options) as out:
        stream = add_stream(out, fps, width, height, lossless, bframes, gop, codec, open_gop)
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(i, width, height), format="rgb24")
            frame.pts, frame.time_base = pts[i], _TIME_BASE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def frame_pts(num_frames: int, fps: float, timestamps: Sequence[float] | None) -> list[int]:
    if timestamps is None:
        timestamps = [i / fps for i in range(num_frames)]
    if len(timestamps) != num_frames:
        raise ValueError(f"{len(timestamps)} timestamps for {num_frames} frames")
    pts = [round(t * _TIME_BASE.denominator) for t in timestamps]
    if any(b <= a for a, b in zip(pts, pts[1:])):
        raise ValueError("timestamps must be strictly increasing (after rounding to 1/90000 s)")
    return pts


def add_stream(out, fps, width, height, lossless, bframes, gop, codec, open_gop):
    rate = Fraction(fps).limit_denominator(1001)
    if lossless:
        stream = out.add_stream("libx264rgb", rate=rate, options={"crf": "0", "preset": "ultrafast"})
        stream.pix_fmt = "rgb24"
    elif codec == "libvpx-vp9":
        stream = out.add_stream(codec, rate=rate, options={"g": str(gop), "keyint_min": str(gop), "crf": "20",
                                                           "b": "0", "deadline": "realtime", "cpu-used": "8"})
        stream.pix_fmt = "yuv420p"
    else:
        params = f"bframes={bframes}:keyint={gop}:min-keyint={gop}:scenecut=0:open-gop={int(open_gop)}"
        key = {"libx264": "x264-params", "libx265": "x265-params"}[codec]
        if codec == "libx265":
            params += ":log-level=error"
        stream = out.add_stream(codec, rate=rate, options={"crf": "20", "preset": "veryfast", key: params})
        stream.pix_fmt = "yuv420p"
    stream.width, stream.height = width, height
    stream.time_base = _TIME_BASE
    stream.codec_context.time_base = _TIME_BASE
    return stream


# ---------------------------------------------------------------- broken and non-video files

def write_truncated(src: str, path: str, keep: float = 0.6) -> str:
    """Copy the first `keep` fraction of the bytes of `src` to `path` (a download cut short)."""
    with open(src, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: int(len(data) * keep)])
    return path


def write_empty(path: str) -> str:
    """A zero-byte file."""
    open(path, "wb").close()
    return path


def write_random_bytes(path: str, size: int = 20000, seed: int = 0) -> str:
    """`size` random bytes: not a container at all."""
    with open(path, "wb") as fh:
        fh.write(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_audio_only(path: str, seconds: float = 1.0, rate: int = 16000) -> str:
    """A container (format from `path`'s extension, e.g. .mp4/.m4a) with one AAC audio stream only."""
    import av

    t = np.arange(int(seconds * rate)) / rate
    samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
    with av.open(path, "w") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_image(path: str, width: int = 64, height: int = 48) -> str:
    """A PNG image written under `path` whatever its extension (an image renamed .mp4)."""
    from PIL import Image

    with open(path, "wb") as fh:
        Image.fromarray(index_frame(5, width, height)).save(fh, format="PNG")
    return path


def write_corrupt_middle(src: str, path: str, start: float = 0.45, length: float = 0.1, seed: int = 0) -> str:
    """`src` with random bytes over `length` of its payload from `start` (fractions of the file size):
    the container is intact, some frames in the middle are damaged."""
    data = bytearray(open(src, "rb").read())
    lo, n = int(len(data) * start), max(1, int(len(data) * length))
    data[lo:lo + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(data))
    return path


def write_unsupported_codec(src: str, path: str) -> str:
    """An mp4 from `src` whose video sample entry claims a codec no decoder knows ('avc1' → 'zzz9')."""
    data = bytearray(open(src, "rb").read())
    entry = data.find(b"avc1", max(data.find(b"stsd"), 0))
    if data.find(b"stsd") < 0 or entry < 0:
        raise ValueError(f"{src} has no avc1 sample entry to rename")
    data[entry:entry + 4] = b"zzz9"
    open(path, "wb").write(bytes(data))
    return path


def write_huge_duration_claim(src: str, path: str) -> str:
    """An mp4 from `src` whose movie and media headers claim a duration of ~2^32 ticks (a broken header
    promising hundreds of hours), while the samples are those of `src`."""
    data = bytearray(open(src, "rb").read())
    for box in (b"mvhd", b"mdhd"):
        at = data.find(box)
        while at != -1:
            if data[at + 4] == 0:                                 # version 0: 32-bit fields
                data[at + 4 + 16:at + 4 + 20] = (0xFFFFFFF0).to_bytes(4, "big")
            at = data.find(box, at + 4)
    open(path, "wb").write(bytes(data))
    return path
