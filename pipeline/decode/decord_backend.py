"""The decord backend: planned frames through `VideoReader.get_batch`, a few at a time; where decord
fails on a file PyAV could probe, the rest of the video is decoded with PyAV in exact mode."""
from __future__ import annotations

import logging
import sys
from typing import Iterator

import numpy as np

from pipeline.decode.assembly import Assembler, Clip
from pipeline.decode.probing import VideoInfo
from pipeline.decode.pyav import pyav_clips

log = logging.getLogger(__name__)


_DECORD_CHUNK = 8        # frames per get_batch call: bounds memory for large sources


class _DecordFailed(Exception):
    pass


def decord_clips(path, info, plan, config, video, progress) -> Iterator[Clip]:
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
        yield from pyav_clips(path, info, plan, exact, video, progress, start)


def _decord_plan(reader, index_map, info, plan, config, video, progress) -> Iterator[Clip]:
    asm = Assembler(plan, 0, config, video, 0, 0)          # decord applies the display rotation itself
    for spec in plan:
        for lo in range(0, len(spec.frame_indices), _DECORD_CHUNK):
            chunk = list(spec.frame_indices[lo:lo + _DECORD_CHUNK])
            batch = _decord_batch(reader, [int(index_map[i]) for i in chunk])
            progress()
            for i, rgb in zip(chunk, batch):
                yield from asm.offer(i, rgb)
    yield from asm.finish()


def _decord_reader(path: str, threads: int):
    decord = import_decord()
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError alike
        raise _DecordFailed(f"cannot open: {exc}") from exc


def import_decord():
    """The `decord` module (decord2, or decord 0.6), without decord2's preloading of every CUDA library
    of the environment's `nvidia` pip packages (which torch's CUDA wheels install): that costs ~800 MB
    of RSS in each decode worker, and CPU decoding needs none of it. decord2 skips the preloading when
    it cannot find the `nvidia` package, so the package is hidden while decord is imported (unless this
    process already imported it)."""
    if "decord" in sys.modules:
        return sys.modules["decord"]
    hide = "nvidia" not in sys.modules
    if hide:
        sys.modules["nvidia"] = None               # importlib.util.find_spec("nvidia") now fails
    try:
        import decord
    finally:
        if hide:
            sys.modules.pop("nvidia", None)
    return decord


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
