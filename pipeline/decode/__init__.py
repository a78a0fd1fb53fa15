"""Decode the planned frames of a video, one clip at a time, behind a watchdog.

`decode_clips(uri, config)` yields `Clip`s: uint8 RGB frames [T, H, W, 3] whose short side is already
`config.preprocess.size` (torch's bilinear, computed without torch by `pipeline.decode.bilinear`), upright (the
display rotation of phone videos is applied), not cropped, not normalised (float32 and unrounded instead
with `preprocess.frame_dtype: float32`); plus the source frames actually used
and the clip's time span. Memory does not grow with the video: frames are converted and resized only when
a sample needs them, and at most a few clips are in flight.

How it works, for one video:
1. `probe_video` demuxes every packet (no decoding) to get the exact presentation timestamps, which
   gives the frame count and VFR support; `pipeline.decode.clips.plan_clips` turns them into the plan.
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
3. By default all of this runs in a worker process (`pipeline.decode.worker`, reused across videos) that
   streams clips back (frames through shared memory); a worker that makes no progress for `timeout_s`
   is killed (native decoders can hang where no thread can interrupt them) and the video fails with
   `DecodeError(kind="timeout")`.
Remote inputs (any fsspec URL) are spooled to a local temporary file first, and always removed.

Modules, one concept each: `clips` (the clip plan: pure, no I/O), `source` (local copy, opening with typed errors), `probing` (the packet scan),
`restarts` (restart points, NAL parsing), `pyav` (the PyAV passes and the GOP filter), `assembly` (frames
into clips), `decord_backend`, `worker` (the watchdog worker).
"""
from __future__ import annotations

import logging
from typing import Callable, ContextManager, Iterator

from pipeline.decode.clips import plan_clips
from pipeline.config import Config, DecodeConfig
from pipeline.decode.assembly import Clip, upright
from pipeline.decode.decord_backend import decord_clips
from pipeline.decode.probing import VideoInfo, probe_local
from pipeline.decode.pyav import pyav_clips
from pipeline.decode.source import local_copy, open_video
from pipeline.decode.worker import decode_in_worker
from pipeline.errors import ConfigError, DecodeError
from pipeline.decode.transforms import FRAME_DTYPES

__all__ = ["decode_clips", "probe_video", "decode_local", "local_copy", "open_video", "upright", "Clip",
           "VideoInfo", "DecodeError", "BACKENDS", "MODES"]

log = logging.getLogger(__name__)

BACKENDS = ("pyav", "decord")
MODES = ("exact", "fast")


def decode_clips(uri: str, config: Config | None = None, *, video_id: str | None = None,
                 fetch: Callable[[str, str], ContextManager[str]] = local_copy) -> Iterator[Clip]:
    """Yield the clips of the video at `uri` (local path or fsspec URL) one at a time, in order.

    Raises `DecodeError(video, kind, reason)` (video = `video_id` or `uri`) on the first problem.
    `config.decode.timeout_s > 0` decodes in a watchdog worker process; `<= 0` decodes in this process.
    `fetch(uri, video)` gives the local file to decode (default `local_copy`; a task of several videos
    passes `Prefetcher.local`, prefetch.py, so that the next one downloads while this one decodes).
    """
    config = config or Config()
    video = video_id or uri
    _check_config(config)
    with fetch(uri, video) as path:
        if config.decode.timeout_s > 0:
            yield from decode_in_worker(path, config, video)
        else:
            yield from decode_local(path, config, video)


def probe_video(uri: str, *, video_id: str | None = None) -> VideoInfo:
    """Metadata and exact frame timestamps of the video at `uri`, by demuxing it in this process."""
    video = video_id or uri
    with local_copy(uri, video) as path:
        return probe_local(path, video)


def decode_local(path: str, config: Config, video: str, progress: Callable[[], None] = lambda: None
                 ) -> Iterator[Clip]:
    """`decode_clips` for a local file, in this process, without a watchdog. `progress()` is called
    as decoding advances (the worker uses it for heartbeats)."""
    info = probe_local(path, video)
    plan = plan_clips(info.timestamps, info.duration_s, config.sampling)
    log.debug("%s: %d frames, %.2f s, %d clips", video, info.num_frames, info.duration_s, len(plan))
    if config.decode.backend == "decord":
        yield from decord_clips(path, info, plan, config, video, progress)
    else:
        yield from pyav_clips(path, info, plan, config, video, progress)


def _check_config(config: Config) -> None:
    _check_decode_config(config.decode)
    if config.preprocess.frame_dtype not in FRAME_DTYPES:
        raise ConfigError(f"preprocess.frame_dtype must be one of {tuple(FRAME_DTYPES)}, "
                          f"got {config.preprocess.frame_dtype!r}")


def _check_decode_config(d: DecodeConfig) -> None:
    if d.backend not in BACKENDS:
        raise ConfigError(f"decode.backend must be one of {BACKENDS}, got {d.backend!r}")
    if d.mode not in MODES:
        raise ConfigError(f"decode.mode must be one of {MODES}, got {d.mode!r}")
    if d.max_snap < 0:
        raise ConfigError(f"decode.max_snap must be >= 0, got {d.max_snap}")
