"""Thumbnail strips for the run report: a few frames spread evenly over a video, side by side.

    image = thumbnail_strip("s3://bucket/v.mp4", count=4, height=72)   # uint8 [72, W, 3]
    src, problem = strip_data_uri(uri)      # ("data:image/jpeg;base64,...", None) or (None, "not_found: ...")

Frames are seeked to (not decoded from the start), so a strip of an hours-long video costs a few GOPs
of decoding plus the packet scan of `probe_video` (which gives the duration and display rotation);
remote videos are copied locally first, as for extraction (`pipeline.decode.local_copy`).
"""
from __future__ import annotations

import base64
import io
import logging

import numpy as np

from pipeline.decode import local_copy, open_video, probe_video, upright
from pipeline.errors import DecodeError

log = logging.getLogger(__name__)

GAP = 2                                        # px of white between frames


def thumbnail_strip(uri: str, count: int = 4, height: int = 72, video_id: str | None = None) -> np.ndarray:
    """`count` frames at the middles of equal parts of the video, upright, scaled to `height`, joined
    left to right: uint8 [height, W, 3]. Raises DecodeError naming the video and the reason."""
    video = video_id or uri
    with local_copy(uri, video) as path:
        info = probe_video(path, video_id=video)
        times = [(i + 0.5) * info.duration_s / count for i in range(count)]
        frames = [upright(f[None], info.rotation)[0] for f in _frames_at(path, times, video)]
    return _join([_scaled(f, height) for f in frames])


def strip_data_uri(uri: str, count: int = 4, height: int = 72, video_id: str | None = None
                   ) -> tuple[str | None, str | None]:
    """(a JPEG data URI of the strip, None), or (None, why not) when the video cannot be read: the
    report shows a placeholder instead of failing."""
    try:
        image = thumbnail_strip(uri, count, height, video_id)
    except DecodeError as exc:
        return None, f"{exc.kind}: {exc.reason}"
    except Exception as exc:                   # noqa: BLE001 - one unreadable video must not stop the report
        log.warning("no thumbnails for %s: %s: %s", video_id or uri, type(exc).__name__, exc)
        return None, f"unexpected: {type(exc).__name__}: {exc}"
    return "data:image/jpeg;base64," + base64.b64encode(_jpeg(image)).decode(), None


def _frames_at(path: str, times: list[float], video: str) -> list[np.ndarray]:
    """The first frame at or after each time (seconds from the stream's start), by seeking: RGB arrays."""
    import av

    try:
        with open_video(path, video) as container:            # typed errors: not_found, corrupt, no video…
            stream = container.streams.video[0]
            return [_frame_after(container, stream, t) for t in times]
    except av.error.FFmpegError as exc:
        raise DecodeError(video, "corrupt", f"cannot decode a thumbnail frame: {exc}") from exc


def _frame_after(container, stream, seconds: float) -> np.ndarray:
    target = int(seconds / stream.time_base) + (stream.start_time or 0)
    container.seek(target, stream=stream, backward=True)
    last = None
    for frame in container.decode(stream):
        last = frame
        if frame.pts is None or frame.pts >= target:
            break
    if last is None:
        raise DecodeError(container.name, "corrupt", f"no frame decodes after {seconds:.1f} s")
    return last.to_ndarray(format="rgb24")


def _scaled(frame: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    h, w = frame.shape[:2]
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


def _join(frames: list[np.ndarray]) -> np.ndarray:
    height = frames[0].shape[0]
    gap = np.full((height, GAP, 3), 255, np.uint8)
    pieces = [p for f in frames for p in (f, gap)][:-1]
    return np.concatenate(pieces, axis=1)


def _jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
