"""Probing: one demux pass over a video's packets (no decoding but the first frame) gives its exact
presentation timestamps (so the frame count, VFR, truncation) and where decoding may restart
(`pipeline.decode.restarts`), as a `VideoInfo`."""
from __future__ import annotations

import array
import logging
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from pipeline.decode.restarts import independent, nal_length_size, restart_points
from pipeline.decode.source import open_video, raise_if_io
from pipeline.errors import DecodeError

log = logging.getLogger(__name__)

@dataclass
class VideoInfo:
    """What the container says about a video's first video stream, from demuxing (not decoding) it.

    timestamps: float64 [num_frames], start of each frame in seconds from the first, presentation order.
    pts:        int64 [num_frames], the same in stream time-base units (None when the container has none,
                then frames are counted in decode order at `fps`).
    duration_s: end of the last frame. width/height: as coded (before `rotation`, degrees
    counter-clockwise to display upright). truncated: demuxing stopped early at damaged data.
    restarts:   int64, increasing: pts of the clean restart points (see `restart_points`), where
                decoding may resume after packets were dropped (None or empty: nowhere).
    """

    fps: float
    num_frames: int
    duration_s: float
    width: int
    height: int
    codec: str
    rotation: int
    vfr: bool
    format: str
    timestamps: np.ndarray = field(repr=False)
    pts: np.ndarray | None = field(repr=False)
    time_base: Fraction = Fraction(1, 1)
    truncated: bool = False
    restarts: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-friendly summary (without the per-frame arrays)."""
        return {
            "fps": self.fps, "num_frames": self.num_frames, "duration_s": self.duration_s,
            "width": self.width, "height": self.height, "codec": self.codec, "rotation": self.rotation,
            "vfr": self.vfr, "format": self.format, "truncated": self.truncated,
        }


def probe_local(path: str, video: str) -> VideoInfo:
    container = open_video(path, video)
    try:
        stream = container.streams.video[0]
        scan = _PacketScan(container, stream, video)
        scan.run()
        return scan.info()
    finally:
        container.close()


class _PacketScan:
    """One demux pass over a video stream: every packet's pts, plus the first decoded frame (for
    rotation and the real frame size and to prove the stream decodes at all)."""

    def __init__(self, container, stream, video: str):
        self.container, self.stream, self.video = container, stream, video
        self.pts = array.array("q")          # compact: 8 bytes a frame, also for hours of video
        self.clean_key = array.array("b")     # per packet in pts: an independently decodable keyframe
        self.codec = stream.codec_context.name
        self.nal_length = nal_length_size(stream.codec_context.extradata, self.codec)
        self.missing_pts = 0
        self.last_duration = 0
        self.max_pts: int | None = None
        self.first_frame = None
        self.truncated = False

    def run(self) -> None:
        import av

        self.stream.codec_context.thread_count = 1
        try:
            for packet in self.container.demux(self.stream):
                self._add(packet)
        except (av.error.FFmpegError, OSError) as exc:
            raise_if_io(exc, self.video)
            self.truncated = True
            log.warning("%s: demuxing stopped at damaged data after %d packets: %s", self.video,
                        len(self.pts) + self.missing_pts, exc)
        if self.first_frame is None:
            self._decode_first(None)

    def _add(self, packet) -> None:
        if packet.size == 0 or packet.is_discard:
            return
        if packet.pts is None:
            self.missing_pts += 1
        else:
            self.pts.append(packet.pts)
            self.clean_key.append(packet.is_keyframe and independent(packet, self.codec, self.nal_length))
            if self.max_pts is None or packet.pts > self.max_pts:
                self.max_pts, self.last_duration = packet.pts, packet.duration or 0
        if self.first_frame is None:
            self._decode_first(packet)

    def _decode_first(self, packet) -> None:
        import av

        try:
            frames = self.stream.codec_context.decode(packet)
        except av.error.FFmpegError:
            return
        if frames and self.first_frame is None:
            self.first_frame = frames[0]

    def info(self) -> VideoInfo:
        count = len(self.pts) + self.missing_pts
        if count == 0:
            raise DecodeError(self.video, "no_frames", "the video stream has no frames")
        if self.first_frame is None:
            raise DecodeError(self.video, "corrupt", f"none of the {count} frames could be decoded")
        stream, frame = self.stream, self.first_frame
        pts, timestamps, duration, tb = self._timeline(count)
        count = len(timestamps)
        diffs = np.diff(pts) if pts is not None and len(pts) > 1 else np.zeros(0)
        vfr = bool(len(diffs) and diffs.max() - diffs.min() > max(2, 0.01 * float(np.median(diffs))))
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate and not vfr else count / duration
        return VideoInfo(
            fps=fps, num_frames=count, duration_s=duration, width=frame.width, height=frame.height,
            codec=stream.codec_context.name, rotation=int(round(frame.rotation or 0)), vfr=vfr,
            format=self.container.format.name, timestamps=timestamps, pts=pts, time_base=tb,
            truncated=self.truncated, restarts=self._restarts(pts),
        )

    def _restarts(self, pts: np.ndarray | None) -> np.ndarray | None:
        if pts is None or self.truncated:
            return None
        return restart_points(np.frombuffer(self.pts, dtype=np.int64),
                               np.frombuffer(self.clean_key, dtype=np.int8).astype(bool))

    def _timeline(self, count: int):
        """(pts or None, timestamps s, duration s, time base): from pts when every packet has a unique
        one, otherwise counted at the nominal frame rate."""
        tb = self.stream.time_base or Fraction(1, 90000)
        pts = np.unique(np.frombuffer(self.pts, dtype=np.int64))
        if self.missing_pts or len(pts) != count:
            rate = float(self.stream.average_rate or self.stream.guessed_rate or 25)
            log.warning("%s: frames lack unique timestamps; assuming %.3f fps", self.video, rate)
            return None, np.arange(count) / rate, count / rate, tb
        if self.truncated or 0 < len(pts) < (self.stream.frames or 0):
            self.truncated = True
            pts = _trim_tail_gap(pts)
            log.warning("%s: truncated stream; %d frames readable", self.video, len(pts))
        last = self.last_duration or (int(np.median(np.diff(pts))) if len(pts) > 1 else 0)
        if last <= 0:
            rate = self.stream.average_rate or self.stream.guessed_rate or 25
            last = max(1, round(1 / (float(rate) * float(tb))))
        timestamps = (pts - pts[0]).astype(np.float64) * float(tb)
        duration = float((int(pts[-1] - pts[0]) + last) * tb)
        return pts, timestamps, duration, tb


def _trim_tail_gap(pts: np.ndarray, window: int = 32) -> np.ndarray:
    """Sorted pts of a truncated stream without the reference frames read past the cut: packets come
    in decode order, so the last few frames before a cut can be missing while later P-frames are there.
    Cuts at the first gap wider than 1.5 median frame steps among the last `window` frames."""
    if len(pts) < 3:
        return pts
    step = float(np.median(np.diff(pts)))
    tail_start = max(1, len(pts) - window)
    gaps = np.nonzero(np.diff(pts[tail_start - 1:]) > 1.5 * step)[0]
    return pts[:tail_start + gaps[0]] if len(gaps) else pts
