"""The PyAV backend: forward decode passes that skip what the plan does not need.

Mode "exact" (selective) lets the decoder skip every non-reference frame except the ones the plan needs;
mode "fast" skips all non-reference frames and snaps each sample to a decoded frame within `max_snap`.
A pass that cannot deliver falls back to a stricter one (fast → exact → full decode) from the clip where
it failed. Both leave out whole packets no sample needs between restart points (`GopFilter`).
"""
from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np

from pipeline.decode.assembly import Assembler, Clip, Missing
from pipeline.decode.probing import VideoInfo
from pipeline.decode.source import open_video, raise_if_io
from pipeline.errors import DecodeError

log = logging.getLogger(__name__)


_PASSES = {"fast": ("nonref", "selective", "full"), "exact": ("selective", "full")}


def pyav_clips(path, info, plan, config, video, progress, start: int = 0) -> Iterator[Clip]:
    """Run the mode's passes in turn from clip `start`; each later pass starts at the clip where the
    previous one failed."""
    passes = _PASSES[config.decode.mode] if info.pts is not None else ("full",)
    for policy in passes:
        try:
            for clip in pyav_pass(path, info, plan, start, policy, config, video, progress):
                start = clip.index + 1
                yield clip
            return
        except Missing as miss:
            if policy == passes[-1]:
                raise DecodeError(video, "corrupt", f"no frame of clip {miss.clip} could be decoded") from None
            log.info("%s: %s pass missed frame %d of clip %d; retrying from there with a stricter pass",
                     video, policy, miss.frame, miss.clip)
            start = miss.clip


def pyav_pass(path, info, plan, start, policy, config, video, progress) -> Iterator[Clip]:
    """One forward decode from the beginning, yielding clips `start`…; `policy` says which frames the
    decoder may skip: nonref (all non-reference frames), selective (non-reference frames the plan does
    not need), full (none)."""
    max_snap = {"nonref": config.decode.max_snap, "selective": 0, "full": math.inf}[policy]
    asm = Assembler(plan, start, config, video, info.rotation, max_snap)
    wanted_pts = {int(info.pts[i]) for i in asm.wanted()} if policy == "selective" else set()
    gops = None if policy == "full" else GopFilter.of(info, asm.wanted(), 0 if policy == "selective" else max_snap)
    container = open_video(path, video)
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


class GopFilter:
    """Which packets a pass may leave out entirely: between two clean restart points (see
    `restart_points`) every packet after the last one holding a needed frame, and GOPs that hold none.
    What a dropped packet would have produced is never shown, nor referenced by any needed frame: frames
    only reference frames decoded before them, and nothing after a restart point references anything
    before it."""

    def __init__(self, restarts: np.ndarray, needed_pts: np.ndarray):
        self.gop_at = {int(p): g for g, p in enumerate(restarts.tolist(), start=1)}   # pts → GOP number
        self.needed = set(needed_pts.tolist())
        gop = np.searchsorted(restarts, needed_pts, side="right")      # 0: before the first restart point
        self.remaining = np.bincount(gop, minlength=len(restarts) + 1).tolist()   # Python ints: per packet
        self.gop = 0
        self.dropping = False
        self.dropped = 0

    @classmethod
    def of(cls, info: VideoInfo, wanted: set[int], snap: float) -> "GopFilter | None":
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
    with `gops` (a `GopFilter`), packets it does not keep are not decoded at all."""
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
        raise_if_io(exc, video)
        log.warning("%s: stopped reading at damaged data: %s", video, exc)
    yield None


def _frame_index(frame, info: VideoInfo, counter: int) -> int | None:
    """The frame's index in the probed timeline (None: not in it, e.g. past a truncation)."""
    if info.pts is None:
        return counter
    i = int(info.pts.searchsorted(frame.pts)) if frame.pts is not None else len(info.pts)
    return i if i < len(info.pts) and info.pts[i] == frame.pts else None
