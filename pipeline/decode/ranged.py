"""A remote video fetched as several byte ranges at once.

Object stores cap each stream (S3: 50–100 MB/s a connection, tens of ms to the first byte) but not a
client's streams together. A decode task's first video is the one download that prefetching
(prefetch.py) cannot hide, and a run's first tasks hold one video each (feed.py's ramp), so that wait is
cut here: the file is read as up to `VIDFEAT_DOWNLOAD_STREAMS` (default 8) concurrent ranged GETs of
`RANGE` bytes (2 MiB), a window at a time, written in order. Measured on a store with 30 ms per request
and 50 MB/s per stream: a 7.7 MB video kept its slot waiting 0.11 s instead of 0.29 s (BENCHMARKS.md).

Only file systems with an async implementation (s3fs, gcsfs, adlfs, http: their `cat_ranges` runs the
ranges concurrently) and files of more than one range are read this way; the others are read as one
stream (spool.py). Each window must arrive within the stall deadline. A store that does not honour
ranges (a range of the wrong length: an http server that answers 200 with the whole file) raises
`RangesIgnored`, and the caller reads the file as one stream instead. Memory: one window, 16 MiB.
"""
from __future__ import annotations

import os
import threading

from pipeline.errors import DecodeError
from pipeline.storage import DeadlineExceeded, within

RANGE = 2 * 2**20


class RangesIgnored(Exception):
    """The store answered a ranged read with the wrong number of bytes."""


def streams() -> int:
    return max(1, int(os.environ.get("VIDFEAT_DOWNLOAD_STREAMS", "8")))


def applies(fs, size: int | None) -> bool:
    """Whether `fs` and a file of `size` bytes are read as concurrent ranges."""
    return bool(getattr(fs, "async_impl", False)) and bool(size) and size > RANGE and streams() > 1


def copy_ranges(fs, path: str, dst, size: int, video: str, stall_s: float,
                stop: threading.Event | None = None) -> None:
    """Write the `size` bytes of `path` to `dst`, a window of concurrent ranges at a time."""
    window = RANGE * streams()
    for first in range(0, size, window):
        if stop is not None and stop.is_set():
            raise DecodeError(video, "io", "download cancelled: its decode task ended")
        starts = list(range(first, min(size, first + window), RANGE))
        ends = [min(start + RANGE, size) for start in starts]
        for start, end, data in zip(starts, ends, _window(fs, path, starts, ends, video, stall_s, size)):
            if len(data) != end - start:
                raise RangesIgnored(f"asked for bytes {start}-{end}, got {len(data)}")
            dst.write(data)


def _window(fs, path: str, starts: list[int], ends: list[int], video: str, stall_s: float, size: int):
    try:
        return within(stall_s, fs.cat_ranges, [path] * len(starts), starts, ends, on_error="raise")
    except DeadlineExceeded:
        raise DecodeError(video, "io", f"download stalled: no bytes for {stall_s:.0f} s after "
                                       f"{starts[0] / 2**20:.1f} of {size / 2**20:.1f} MiB") from None
