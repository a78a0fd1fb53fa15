"""What the model will see of one video: the clip plan as decoded, and the frames as images.

`inspect_video` backs `vidfeat inspect VIDEO --json`; `dump_frames` backs `--dump-frames DIR`. Both decode
through `pipeline.decode.decode_clips`, so they show what a run would use, snapping included.
"""
from __future__ import annotations

import io
import logging
import math
import posixpath
from typing import Iterator

import numpy as np

from pipeline.config import Config
from pipeline.decode import decode_clips, local_copy, probe_video
from pipeline.decode.transforms import crop

log = logging.getLogger(__name__)

SHEET_COLUMNS = 8


def inspect_video(uri: str, config: Config | None = None) -> dict:
    """`{"video": {fps, num_frames, duration_s, width, height, codec, rotation, vfr, format, truncated},
    "clips": [{index, frame_indices, start_s, end_s, valid_frames}]}`, JSON-serialisable.

    `frame_indices` are the source frames `decode_clips` actually used (the whole video is decoded).
    """
    config = config or Config()
    with local_copy(uri) as path:
        video = probe_video(path, video_id=uri).to_dict()
        clips = [_clip_summary(clip) for clip in decode_clips(path, config, video_id=uri)]
    return {"video": video, "clips": clips}


def _clip_summary(clip) -> dict:
    return {
        "index": clip.index,
        "frame_indices": [int(i) for i in clip.frame_indices],
        "start_s": float(clip.start_s),
        "end_s": float(clip.end_s),
        "valid_frames": int(clip.valid_frames),
    }


def dump_frames(uri: str, out_dir: str, config: Config | None = None) -> list[str]:
    """Write every sampled frame as the model sees it before normalisation (resized, centre-cropped):
    `out_dir/clip{k:04d}_frame{j:02d}.png`, plus `out_dir/clip{k:04d}_sheet.png` (the clip's frames in
    rows of 8, padding included). `out_dir` may be a local path or fsspec URL; returns the paths written."""
    import fsspec

    config = config or Config()
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    written = []
    for clip in decode_clips(uri, config):
        frames = crop(clip.frames, config.preprocess.size, 1)[0]
        for name, image in _clip_images(clip.index, frames):
            path = posixpath.join(root, name)
            with fs.open(path, "wb") as fh:
                fh.write(_png(image))
            written.append(path)
    log.info("wrote %d images to %s", len(written), out_dir)
    return written


def _clip_images(k: int, frames: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    for j, frame in enumerate(frames):
        yield f"clip{k:04d}_frame{j:02d}.png", frame
    yield f"clip{k:04d}_sheet.png", contact_sheet(frames)


def contact_sheet(frames: np.ndarray, columns: int = SHEET_COLUMNS, gap: int = 2) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] tiled row-major into one image, `columns` wide, `gap` px of white."""
    t, h, w, c = frames.shape
    cols = min(columns, t)
    rows = math.ceil(t / cols)
    sheet = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        y, x = (i // cols) * (h + gap), (i % cols) * (w + gap)
        sheet[y:y + h, x:x + w] = frame
    return sheet


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
