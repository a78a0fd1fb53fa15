"""Decode the planned frames of a video, one clip at a time, behind a watchdog.

`decode_clips(uri, config)` yields `Clip`s: uint8 RGB frames [T, H, W, 3] whose short side is already
`config.preprocess.size` (torch bilinear, `pipeline.transforms.resize_short_side`), upright (the display
rotation of phone videos is applied), not cropped, not normalised; plus the source frames actually used
and the clip's time span. Memory does not grow with the video: frames are converted and resized only when
a sample needs them, and at most a few clips are in flight.

How it works, for one video:
1. `probe_video` demuxes every packet (no decoding) to get the exact presentation timestamps, which
   gives the frame count and VFR support; `pipeline.clips.plan_clips` turns them into the plan.
2. PyAV decodes in one forward pass. Mode "exact" (selective) lets the decoder skip every
   non-reference frame except the ones the plan needs, so it returns exactly the planned frames for
   about the cost of decoding reference frames only. Mode "fast" skips all non-reference frames and
   snaps each sample to the nearest decoded frame within `max_snap` frames. A pass that cannot deliver
   what it promises falls back to a stricter one (fast → exact → full decode) from the clip where it
   failed; the full pass substitutes the nearest decodable frame for undecodable ones (truncated or
   corrupt streams) and records it in `frame_indices`.
   Both modes also leave out whole packets no sample needs: the probe finds the restart points (IDR
   frames of H.264/HEVC, keyframes of VP8/VP9, each also a clean cut in presentation time), and a pass
   stops feeding the decoder after the last needed packet of a GOP until the next restart point, so a
   GOP without a sample is not decoded at all. Frames are unchanged by this (tested bit for bit).
   The decord backend reads the planned indices with `VideoReader.get_batch`, a few frames at a time.
3. By default all of this runs in a worker process (`pipeline.watchdog`, reused across videos) that
   streams clips back (frames through shared memory); a worker that makes no progress for `timeout_s`
   is killed (native decoders can hang where no thread can interrupt them) and the video fails with
   `DecodeError(kind="timeout")`.
Remote inputs (any fsspec URL) are spooled to a local temporary file first, and always removed.
"""
from __future__ import annotations

import array
import contextlib
import logging
import math
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterator

import numpy as np

from pipeline import watchdog
from pipeline.clips import ClipSpec, plan_clips
from pipeline.config import Config, DecodeConfig
from pipeline.errors import ConfigError, DecodeError
from pipeline.transforms import resize_short_side

log = logging.getLogger(__name__)

BACKENDS = ("pyav", "decord")
MODES = ("exact", "fast")
_IMAGE_FORMATS = ("image2", "apng", "webp_pipe")      # plus every "*_pipe" demuxer (png_pipe, jpeg_pipe, ...)
_CONTAINER_MAGIC = (b"ftyp", b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"G")


@dataclass
class VideoInfo:
    """What the container says about a video's first video stream, from demuxing (not decoding) it.

    timestamps: float64 [num_frames], start of each frame in seconds from the first, presentation order.
    pts:        int64 [num_frames], the same in stream time-base units (None when the container has none,
                then frames are counted in decode order at `fps`).
    duration_s: end of the last frame. width/height: as coded (before `rotation`, degrees
    counter-clockwise to display upright). truncated: demuxing stopped early at damaged data.
    restarts:   int64, increasing: pts of the clean restart points (see `_restart_points`), where
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


@dataclass
class Clip:
    """One decoded clip, ready for `pipeline.transforms.to_model_input`.

    frames:        uint8 [num_frames, H, W, 3] RGB, short side = preprocess.size, upright.
    frame_indices: source frame used for each sample (may differ from the plan by ≤ max_snap in fast
                   mode, or where a frame could not be decoded).
    sample_times, start_s, end_s, valid_frames: as in `pipeline.clips.ClipSpec` (seconds).
    """

    video: str
    index: int
    frames: np.ndarray
    frame_indices: tuple[int, ...]
    sample_times: tuple[float, ...]
    start_s: float
    end_s: float
    valid_frames: int


# ====================================================================== public entry points

def decode_clips(uri: str, config: Config | None = None, *, video_id: str | None = None) -> Iterator[Clip]:
    """Yield the clips of the video at `uri` (local path or fsspec URL) one at a time, in order.

    Raises `DecodeError(video, kind, reason)` (video = `video_id` or `uri`) on the first problem.
    `config.decode.timeout_s > 0` decodes in a watchdog worker process; `<= 0` decodes in this process.
    """
    config = config or Config()
    video = video_id or uri
    _check_decode_config(config.decode)
    with local_copy(uri, video) as path:
        if config.decode.timeout_s > 0:
            yield from _decode_in_worker(path, config, video)
        else:
            yield from decode_local(path, config, video)


def probe_video(uri: str, *, video_id: str | None = None) -> VideoInfo:
    """Metadata and exact frame timestamps of the video at `uri`, by demuxing it in this process."""
    video = video_id or uri
    with local_copy(uri, video) as path:
        return _probe_local(path, video)


def decode_local(path: str, config: Config, video: str, progress: Callable[[], None] = lambda: None
                 ) -> Iterator[Clip]:
    """`decode_clips` for a local file, in this process, without a watchdog. `progress()` is called
    as decoding advances (the worker uses it for heartbeats)."""
    info = _probe_local(path, video)
    plan = plan_clips(info.timestamps, info.duration_s, config.sampling)
    log.debug("%s: %d frames, %.2f s, %d clips", video, info.num_frames, info.duration_s, len(plan))
    if config.decode.backend == "decord":
        yield from _decord_clips(path, info, plan, config, video, progress)
    else:
        yield from _pyav_clips(path, info, plan, config, video, progress)


@contextlib.contextmanager
def local_copy(uri: str, video: str | None = None) -> Iterator[str]:
    """A local path for `uri`: local paths and file:// as they are; any other fsspec URL is copied to a
    temporary file that is removed on exit (also on error or when a generator using it is closed)."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    video = video or uri
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError) as exc:
        raise DecodeError(video, "io", f"cannot open {uri!r}: {exc}") from exc
    if isinstance(fs, LocalFileSystem):
        yield path
        return
    spool = tempfile.mkdtemp(prefix="vidfeat-spool-")
    try:
        local = os.path.join(spool, "video" + os.path.splitext(path)[1][:16])
        _download(fs, path, local, video)
        yield local
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _download(fs, path: str, local: str, video: str) -> None:
    try:
        fs.get_file(path, local)
    except FileNotFoundError as exc:
        raise DecodeError(video, "not_found", f"no such file: {exc}") from exc
    except PermissionError as exc:
        raise DecodeError(video, "permission_denied", f"access denied: {exc}") from exc
    except Exception as exc:  # network and storage errors come in many types
        raise DecodeError(video, "io", f"download failed: {type(exc).__name__}: {exc}") from exc


def _check_decode_config(d: DecodeConfig) -> None:
    if d.backend not in BACKENDS:
        raise ConfigError(f"decode.backend must be one of {BACKENDS}, got {d.backend!r}")
    if d.mode not in MODES:
        raise ConfigError(f"decode.mode must be one of {MODES}, got {d.mode!r}")
    if d.max_snap < 0:
        raise ConfigError(f"decode.max_snap must be >= 0, got {d.max_snap}")


# ====================================================================== opening and probing

def _open(path: str, video: str):
    """av.open with every failure turned into a DecodeError of the right kind."""
    import av

    _check_file(path, video)
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.FileNotFoundError as exc:
        raise DecodeError(video, "not_found", f"no such file: {path}") from exc
    except av.error.PermissionError as exc:
        raise DecodeError(video, "permission_denied", f"cannot read {path}") from exc
    except (av.error.InvalidDataError, av.error.EOFError) as exc:
        raise _unreadable(path, video, exc) from exc
    except av.error.FFmpegError as exc:
        raise DecodeError(video, "corrupt", f"cannot open container: {exc}") from exc
    except OSError as exc:
        raise DecodeError(video, "io", f"cannot read {path}: {exc}") from exc
    try:
        _check_is_video(container, video)
    except BaseException:
        container.close()
        raise
    return container


def _check_file(path: str, video: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise DecodeError(video, "not_found", f"no such file: {path}") from exc
    except PermissionError as exc:
        raise DecodeError(video, "permission_denied", f"cannot access {path}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise DecodeError(video, "not_a_video", f"{path} is a directory")
    if stat.S_ISREG(st.st_mode):
        if st.st_size == 0:
            raise DecodeError(video, "not_a_video", "file is empty (0 bytes)")
        if not os.access(path, os.R_OK):
            raise DecodeError(video, "permission_denied", f"no read permission on {path}")


def _unreadable(path: str, video: str, exc: Exception) -> DecodeError:
    """A file FFmpeg cannot open: damaged if it starts like a known container, otherwise not a video."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        head = b""
    if any(m in head[:8] for m in _CONTAINER_MAGIC if len(m) > 1):
        return DecodeError(video, "corrupt", f"damaged or truncated container ({exc})")
    return DecodeError(video, "not_a_video", f"not a recognised video container ({exc})")


def _check_is_video(container, video: str) -> None:
    fmt = container.format.name
    if fmt.endswith("_pipe") or fmt in _IMAGE_FORMATS:
        raise DecodeError(video, "not_a_video", f"is a still image ({fmt}), not a video")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise DecodeError(video, "not_a_video", f"has no video stream (found: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise DecodeError(video, "unsupported_codec",
                          f"no decoder for its video codec (codec tag {_codec_tag(stream)!r})")


def _codec_tag(stream) -> str:
    """The stream's codec tag / name as the container states it, for error messages."""
    for attr in ("codec_tag", "name"):
        try:
            value = getattr(stream, attr, None) or getattr(stream.codec, attr, None)
        except Exception:                                          # noqa: BLE001 - best effort
            value = None
        if value:
            return str(value)
    return "unknown"


def _probe_local(path: str, video: str) -> VideoInfo:
    container = _open(path, video)
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
        self.nal_length = _nal_length_size(stream.codec_context.extradata, self.codec)
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
            _raise_if_io(exc, self.video)
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
            self.clean_key.append(packet.is_keyframe and _independent(packet, self.codec, self.nal_length))
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
        return _restart_points(np.frombuffer(self.pts, dtype=np.int64),
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


# ====================================================================== where decoding may restart

_RESTART_CODECS = ("h264", "hevc", "vp8", "vp9")   # keyframes checked (IDR) or independent by definition


def _restart_points(decode_pts: np.ndarray, clean_key: np.ndarray) -> np.ndarray:
    """Pts of the packets (decode order in, pts out) at which decoding can start afresh, so that the
    packets before one may be dropped without changing any frame from it on: an independently decodable
    keyframe that is also a clean cut in time — every packet before it in decode order is shown before
    it, and every packet after it is shown after it (no open-GOP leading pictures, which reference
    frames before the keyframe). The GOPs between restart points are then contiguous ranges of pts."""
    n = len(decode_pts)
    if n == 0 or not clean_key.any():
        return np.zeros(0, dtype=np.int64)
    before = np.maximum.accumulate(np.concatenate([[np.iinfo(np.int64).min], decode_pts[:-1]]))
    after = np.minimum.accumulate(np.concatenate([decode_pts[1:], [np.iinfo(np.int64).max]])[::-1])[::-1]
    ok = clean_key & (decode_pts > before) & (decode_pts < after)
    return decode_pts[ok]


def _nal_length_size(extradata: bytes | None, codec: str) -> int:
    """Bytes of the NAL length prefix of H.264/HEVC packets in MP4/MKV (avcC/hvcC), 0 for Annex B."""
    extra = bytes(extradata or b"")
    if codec == "h264" and len(extra) > 4 and extra[0] == 1:
        return (extra[4] & 3) + 1
    if codec == "hevc" and len(extra) > 21 and extra[0] == 1:
        return (extra[21] & 3) + 1
    return 0


def _independent(packet, codec: str, nal_length: int) -> bool:
    """Whether a keyframe packet can be decoded with nothing before it: an IDR picture for H.264/HEVC
    (an open-GOP I-frame, also flagged as a keyframe, is not), any keyframe for VP8/VP9."""
    if codec not in _RESTART_CODECS:
        return False
    if codec in ("vp8", "vp9"):
        return True
    idr = {5} if codec == "h264" else {19, 20}
    for unit in _nal_units(bytes(packet), nal_length):
        kind = unit[0] & 0x1F if codec == "h264" else (unit[0] >> 1) & 0x3F
        if (codec == "h264" and 1 <= kind <= 5) or (codec == "hevc" and kind < 32):   # the first slice
            return kind in idr
    return False


def _nal_units(data: bytes, nal_length: int) -> Iterator[bytes]:
    """The NAL units of a packet: length-prefixed (`nal_length` bytes) or Annex B start codes (0)."""
    if nal_length:
        pos = 0
        while pos + nal_length <= len(data):
            size = int.from_bytes(data[pos:pos + nal_length], "big")
            pos += nal_length
            if size <= 0:
                return
            yield data[pos:pos + size]
            pos += size
        return
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        pos = data.find(b"\x00\x00\x01", start)
        unit = data[start:pos if pos >= 0 else len(data)].rstrip(b"\x00")
        if unit:
            yield unit


# ====================================================================== turning frames into clips

class _Missing(Exception):
    """A pass could not deliver a sample of clip `clip` within its snapping distance."""

    def __init__(self, clip: int, frame: int):
        super().__init__(f"frame {frame} of clip {clip} was not decoded")
        self.clip, self.frame = clip, frame


class _Assembler:
    """Fills clips from decoded frames arriving in presentation order.

    Each sample targets a source frame; `offer(j, frame)` resolves every pending target ≤ j to the nearer
    of the previous decoded frame and frame j, if within `max_snap` frames (else raises `_Missing`).
    Frames are converted to RGB, rotated and resized only when a sample uses them.
    """

    def __init__(self, plan: list[ClipSpec], start: int, config: Config, video: str, rotation: int,
                 max_snap: float):
        self.plan, self.config, self.video, self.rotation = plan, config, video, rotation
        self.max_snap = max_snap
        self.targets = [(c.index, k, i) for c in plan[start:] for k, i in enumerate(c.frame_indices)]
        self.pos = 0
        self.prev: tuple[int, object] | None = None
        self.converted: tuple[int, np.ndarray] | None = None
        self.buffer: np.ndarray | None = None
        self.used: list[int] = []
        self.shape: tuple[int, ...] | None = None      # frame shape of the whole video (the first one's)

    def wanted(self) -> set[int]:
        """Source frames the plan asks for from here on."""
        return {i for _, _, i in self.targets[self.pos:]}

    def offer(self, j: int, frame) -> list[Clip]:
        done = []
        while self.pos < len(self.targets) and self.targets[self.pos][2] <= j:
            done += self._resolve(j, frame)
        self.prev = (j, frame)
        return done

    def finish(self) -> list[Clip]:
        """Resolve the samples past the last decoded frame (the end of the video)."""
        if self.prev is None and self.pos < len(self.targets):
            raise _Missing(self.targets[self.pos][0], self.targets[self.pos][2])
        done = []
        while self.pos < len(self.targets):
            done += self._resolve(None, None)
        return done

    def _resolve(self, j: int | None, frame) -> list[Clip]:
        clip, k, target = self.targets[self.pos]
        d_prev = target - self.prev[0] if self.prev else math.inf
        d_cur = j - target if j is not None else math.inf
        if min(d_prev, d_cur) > self.max_snap:
            raise _Missing(clip, target)
        use_j, use_frame = self.prev if d_prev <= d_cur else (j, frame)
        if use_j != target and self.max_snap == math.inf:
            log.warning("%s: frame %d could not be decoded; using frame %d", self.video, target, use_j)
        self._store(k, use_j, use_frame)
        self.pos += 1
        return [self._emit(clip)] if k == self.config.sampling.num_frames - 1 else []

    def _store(self, k: int, j: int, frame) -> None:
        if self.converted is None or self.converted[0] != j:
            self.converted = (j, self._convert(frame))
        rgb = self.converted[1]
        if self.buffer is None:
            self.shape = self.shape or rgb.shape
            self.buffer = np.empty((self.config.sampling.num_frames, *self.shape), dtype=np.uint8)
        self.buffer[k] = rgb
        self.used.append(j)

    def _convert(self, frame) -> np.ndarray:
        rgb = frame if isinstance(frame, np.ndarray) else frame.to_ndarray(format="rgb24")
        out = resize_short_side(upright(rgb[None], self.rotation), self.config.preprocess.size)[0]
        if self.shape is not None and out.shape != self.shape:
            log.warning("%s: frame size changes mid-stream; fitting %s to %s", self.video, out.shape, self.shape)
            out = _fit(out, self.shape)
        return out

    def _emit(self, index: int) -> Clip:
        spec = self.plan[index]
        clip = Clip(self.video, index, self.buffer, tuple(self.used), spec.sample_times, spec.start_s,
                    spec.end_s, spec.valid_frames)
        self.buffer, self.used = None, []
        return clip


def _fit(rgb: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One uint8 frame [H, W, 3] scaled to exactly `shape` (same bilinear as the resize)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=shape[:2], mode="bilinear", align_corners=False, antialias=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Frames [T, H, W, C] turned `rotation` degrees counter-clockwise (the display matrix), as players
    show them. Multiples of 90 only; other angles are left as they are."""
    if rotation % 90:
        log.warning("ignoring display rotation of %d degrees (not a multiple of 90)", rotation)
        return frames
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k, axes=(1, 2))) if k else frames


# ====================================================================== PyAV backend

_PASSES = {"fast": ("nonref", "selective", "full"), "exact": ("selective", "full")}


def _pyav_clips(path, info, plan, config, video, progress, start: int = 0) -> Iterator[Clip]:
    """Run the mode's passes in turn from clip `start`; each later pass starts at the clip where the
    previous one failed."""
    passes = _PASSES[config.decode.mode] if info.pts is not None else ("full",)
    for policy in passes:
        try:
            for clip in _pyav_pass(path, info, plan, start, policy, config, video, progress):
                start = clip.index + 1
                yield clip
            return
        except _Missing as miss:
            if policy == passes[-1]:
                raise DecodeError(video, "corrupt", f"no frame of clip {miss.clip} could be decoded") from None
            log.info("%s: %s pass missed frame %d of clip %d; retrying from there with a stricter pass",
                     video, policy, miss.frame, miss.clip)
            start = miss.clip


def _pyav_pass(path, info, plan, start, policy, config, video, progress) -> Iterator[Clip]:
    """One forward decode from the beginning, yielding clips `start`…; `policy` says which frames the
    decoder may skip: nonref (all non-reference frames), selective (non-reference frames the plan does
    not need), full (none)."""
    max_snap = {"nonref": config.decode.max_snap, "selective": 0, "full": math.inf}[policy]
    asm = _Assembler(plan, start, config, video, info.rotation, max_snap)
    wanted_pts = {int(info.pts[i]) for i in asm.wanted()} if policy == "selective" else set()
    gops = None if policy == "full" else _GopFilter.of(info, asm.wanted(), 0 if policy == "selective" else max_snap)
    container = _open(path, video)
    try:
        stream = container.streams.video[0]
        ctx = _setup_decoder(stream, config.decode.threads, "DEFAULT" if policy == "full" else "NONREF")
        for frame_index, frame in _decoded_frames(container, stream, ctx, info, wanted_pts, gops, video, progress):
            yield from asm.offer(frame_index, frame)
        yield from asm.finish()
    finally:
        container.close()
        if gops is not None:
            log.debug("%s: %s pass dropped %d packets outside needed GOP spans", video, policy, gops.dropped)


class _GopFilter:
    """Which packets a pass may leave out entirely: between two clean restart points (see
    `_restart_points`) every packet after the last one holding a needed frame, and GOPs that hold none.
    What a dropped packet would have produced is never shown, nor referenced by any needed frame: frames
    only reference frames decoded before them, and nothing after a restart point references anything
    before it."""

    def __init__(self, restarts: np.ndarray, needed_pts: np.ndarray):
        self.gop_at = {int(p): g for g, p in enumerate(restarts.tolist(), start=1)}   # pts → GOP number
        self.needed = set(needed_pts.tolist())
        gop = np.searchsorted(restarts, needed_pts, side="right")      # 0: before the first restart point
        self.remaining = np.bincount(gop, minlength=len(restarts) + 1)
        self.gop = 0
        self.dropping = False
        self.dropped = 0

    @classmethod
    def of(cls, info: VideoInfo, wanted: set[int], snap: float) -> "_GopFilter | None":
        """The filter for a pass that needs source frames `wanted`, each or one within `snap` of it."""
        if info.pts is None or info.restarts is None or not len(info.restarts):
            return None
        reach = int(snap)
        idx = np.array(sorted(wanted), dtype=np.int64)
        if reach:
            # a sample may use any decoded frame within `reach`, but never one before the restart point
            # at or before it: that restart frame is always decoded and at least as near
            near = idx[:, None] + np.arange(-reach, reach + 1)[None, :]
            starts = np.searchsorted(info.pts, info.restarts)              # restart points as frame numbers
            k = np.searchsorted(starts, idx, side="right") - 1
            floor = np.where(k >= 0, starts[np.maximum(k, 0)], 0)
            idx = np.unique(near[near >= floor[:, None]])
        idx = idx[(idx >= 0) & (idx < len(info.pts))]
        return cls(info.restarts, info.pts[idx])

    def keep(self, pts: int) -> bool:
        gop = self.gop_at.get(pts)
        if gop is not None:                                                # a restart point: a new GOP
            self.gop = gop
            self.dropping = self.remaining[self.gop] == 0
        if self.dropping:
            self.dropped += 1
            return False
        if pts in self.needed:
            self.remaining[self.gop] -= 1
            self.dropping = self.gop > 0 and self.remaining[self.gop] == 0
        return True


def _setup_decoder(stream, threads: int, skip: str):
    ctx = stream.codec_context
    ctx.thread_count = threads
    if threads != 1:
        ctx.thread_type = "AUTO"
    ctx.skip_frame = skip
    return ctx


def _decoded_frames(container, stream, ctx, info, wanted_pts, gops, video, progress):
    """(source index, av.VideoFrame) for each frame the decoder outputs, in presentation order. With
    `wanted_pts`, packets holding those pts are decoded even when non-reference frames are skipped;
    with `gops` (a `_GopFilter`), packets it does not keep are not decoded at all."""
    import av

    counter, skipping = 0, True
    for packet in _packets(container, stream, video):
        progress()
        if gops is not None and packet is not None and not gops.keep(packet.pts):
            continue
        if wanted_pts and packet is not None and (packet.pts in wanted_pts) == skipping:
            skipping = not skipping
            ctx.skip_frame = "NONREF" if skipping else "DEFAULT"
        try:
            frames = ctx.decode(packet)
        except av.error.FFmpegError as exc:
            log.debug("%s: decode error (skipped): %s", video, exc)
            continue
        for frame in frames:
            index = _frame_index(frame, info, counter)
            counter += 1
            if index is not None:
                yield index, frame


def _packets(container, stream, video):
    """Demuxed packets, then one flush (None); damaged data ends the stream instead of failing it."""
    import av

    try:
        for packet in container.demux(stream):
            if packet.size:
                yield packet
    except (av.error.FFmpegError, OSError) as exc:
        _raise_if_io(exc, video)
        log.warning("%s: stopped reading at damaged data: %s", video, exc)
    yield None


def _raise_if_io(exc: Exception, video: str) -> None:
    """Re-raise a read failure of the storage (not of the data) as DecodeError(kind="io")."""
    import av

    damaged = isinstance(exc, (av.error.InvalidDataError, av.error.EOFError, av.error.UndefinedError))
    if isinstance(exc, OSError) and not damaged:
        raise DecodeError(video, "io", f"read error: {exc}") from exc


def _frame_index(frame, info: VideoInfo, counter: int) -> int | None:
    """The frame's index in the probed timeline (None: not in it, e.g. past a truncation)."""
    if info.pts is None:
        return counter
    i = int(np.searchsorted(info.pts, frame.pts)) if frame.pts is not None else len(info.pts)
    return i if i < len(info.pts) and info.pts[i] == frame.pts else None


# ====================================================================== decord backend

_DECORD_CHUNK = 8        # frames per get_batch call: bounds memory for large sources


class _DecordFailed(Exception):
    pass


def _decord_clips(path, info, plan, config, video, progress) -> Iterator[Clip]:
    """Planned frames via decord's `get_batch` (always exact), resized with the same torch resize.
    Where decord fails on a file PyAV could probe (decord has size-specific bugs, e.g. 48 px wide
    frames), the rest of the video is decoded with PyAV in exact mode."""
    start = 0
    try:
        reader = _decord_reader(path, config.decode.threads)
        index_map = _decord_index_map(reader, info, video)
        for clip in _decord_plan(reader, index_map, info, plan, config, video, progress):
            start = clip.index + 1
            yield clip
    except _DecordFailed as exc:
        log.warning("%s: decord failed (%s); decoding from clip %d with PyAV", video, exc, start)
        exact = config.replace(decode={"mode": "exact"})
        yield from _pyav_clips(path, info, plan, exact, video, progress, start)


def _decord_plan(reader, index_map, info, plan, config, video, progress) -> Iterator[Clip]:
    asm = _Assembler(plan, 0, config, video, 0, 0)          # decord applies the display rotation itself
    for spec in plan:
        for lo in range(0, len(spec.frame_indices), _DECORD_CHUNK):
            chunk = list(spec.frame_indices[lo:lo + _DECORD_CHUNK])
            batch = _decord_batch(reader, [int(index_map[i]) for i in chunk])
            progress()
            for i, rgb in zip(chunk, batch):
                yield from asm.offer(i, rgb)
    yield from asm.finish()


def _decord_reader(path: str, threads: int):
    import decord

    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError alike
        raise _DecordFailed(f"cannot open: {exc}") from exc


def _decord_index_map(reader, info: VideoInfo, video: str) -> np.ndarray:
    """Our frame index → decord's. Identity when both count the same frames, else nearest timestamp."""
    n = len(reader)
    if n == info.num_frames:
        return np.arange(n)
    log.warning("%s: decord counts %d frames, the demuxer %d; matching by timestamp", video, n, info.num_frames)
    starts = reader.get_frame_timestamp(np.arange(n))[:, 0]
    starts = starts - starts[0]
    return np.abs(starts[None, :] - info.timestamps[:, None]).argmin(axis=1)


def _decord_batch(reader, indices: list[int]) -> np.ndarray:
    try:
        return reader.get_batch(indices).asnumpy()
    except Exception as exc:
        raise _DecordFailed(f"frames {indices[0]}…{indices[-1]}: {str(exc)[-200:]}") from exc


# ====================================================================== watchdog worker

def _worker_init() -> None:
    """Run once in each decode worker, before it takes jobs: the imports, one thread for torch."""
    import av
    import torch

    torch.set_num_threads(1)
    av.logging.set_level(av.logging.ERROR)


_POOL = watchdog.Pool("pipeline.decode:_worker_init")


def _decode_in_worker(path: str, config: Config, video: str) -> Iterator[Clip]:
    """Stream the clips of `path` from a worker process; kill it when it stalls for `timeout_s`."""
    try:
        yield from _POOL.stream("pipeline.decode:_worker_job", (path, config, video), config.decode.timeout_s,
                                what="decoding")
    except watchdog.Stalled as exc:
        raise DecodeError(video, "timeout", f"{exc}; decoder killed") from None
    except watchdog.Crashed as exc:
        raise DecodeError(video, "corrupt", f"the decoder crashed (exit status {exc.returncode})") from None


def _worker_job(path: str, config: Config, video: str, progress: Callable[[], None]) -> Iterator[Clip]:
    """`decode_local` as a worker job: an unexpected failure still fails only this video, with a reason."""
    try:
        yield from decode_local(path, config, video, progress)
    except DecodeError:
        raise
    except Exception as exc:
        log.exception("%s: unexpected decoder failure", video)
        raise DecodeError(video, "corrupt", f"decoder failed: {type(exc).__name__}: {exc}") from None
