"""A remote video fetched as byte ranges, judged by its progress, as wide as its host bears.

Object stores cap each stream (S3: 50–100 MB/s a connection, tens of ms to the first byte) but not a
client's streams together, and a decode task's first video is the one download that prefetching
(prefetch.py) cannot hide. So on a file system with an async implementation (s3fs, gcsfs, adlfs, http)
a file of more than one range is cut into ranges of `RANGE` bytes (2 MiB), read by up to
`VIDFEAT_DOWNLOAD_STREAMS` (default 8) concurrent GETs (`fetch`), each byte written at its place in the
spool file as it lands (memory: a piece per stream). One stream (a file of one range,
`VIDFEAT_DOWNLOAD_STREAMS=1`, a store that does not honour ranges: a range of the wrong length raises
`RangesIgnored`) is the same with one span, the whole file.

Progress, not totals: `Progress` counts bytes as they land, and spool.py fails a download as stalled only
when no byte has landed for the stall deadline, however long the whole takes. Over http(s) a range is
one streamed GET (fsspec's `_get_file` with a Range header, into a file-like `_Sink`): each chunk counts
as it arrives. The object stores' fsspec implementations read a range only whole, so there a range is
read in pieces of 64 KiB to 16 MiB (the first 256 KiB): a host's piece doubles while one arrives in
under an eighth of the stall deadline and halves when one takes over a quarter. There, at the default
60 s, a download is taken for stalled only when no piece lands for a minute: every stream under 4.4 KB/s
(a first piece) or 1.1 KB/s (the smallest).

How many at once (`Width`). Measured on a loopback http server trickling a 600 kB file in 32 KiB ranges,
throughput with 1 / 2 / 4 / 8 streams: capped at 100 kB/s per connection 97 / 193 / 359 / 590 kB/s;
capped at 100 kB/s for the whole server (a slow origin) 101 / 100 / 100 / 101 kB/s: more streams gain
nothing, and each range arrives 8 times slower; a server that loses 20 % per extra connection
101 / 81 / 53 / 23 kB/s: the old fixed 8 streams took 25.6 s instead of 5.9. The rule: a host starts
at one stream. A round runs while every stream is busy and ends when as many ranges have ended as run at
once (two at least), or sooner when no range waits; the width then doubles, up to the most, if the
round was at least `GROW` (1.25) times faster than the best round before it, and otherwise goes back to
the best width and stays there for the rest of the file. A host (http: host:port; object stores: the
bucket) keeps the best width measured for the process (a widening not yet measured is not kept): its
next video starts there and probes one doubling more. On the three servers the rule ended at 8, 1 and 1
streams (first download 276, 100, 97 kB/s). On a store like S3 (30 ms to the first byte, 50 MB/s a
connection) a 7.7 MB video took 0.20 s as one stream and 0.08 s as 8 fixed streams; with the rule the
first video of a host 0.23 s, the next ones 0.15 s (4 ranges verify 2 streams); a 20 MB video 0.37 s,
then 0.17–0.19 s (4 streams; 8 fixed: 0.17 s).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import time
from concurrent.futures import Future
from urllib.parse import urlsplit

RANGE = 2 * 2**20
CHUNK = 2**16                        # http: the most one read of a streamed response returns
PIECES = (2**16, 2**18, 16 * 2**20)  # object stores: the smallest, the first and the largest GET of a range
GROW = 1.25                          # a round this much faster than the best before it widens again
ROUND = 2                            # the fewest ranges a round ends


class RangesIgnored(Exception):
    """The store answered a ranged read with the wrong number of bytes."""


class Progress:
    """The bytes of a download landed so far, and when the last one came. Written by one thread."""

    def __init__(self, size: int | None, clock=time.monotonic):
        self.size, self.got, self.clock = size, 0, clock
        self.last = clock()

    def add(self, count: int) -> None:
        if count:
            self.got += count
            self.last = self.clock()

    def idle(self) -> float:
        """Seconds since the last byte landed (since the start, before the first)."""
        return self.clock() - self.last

    def stalled(self, stall_s: float) -> str:
        total = f" of {self.size / 2**20:.1f}" if self.size else ""
        return f"download stalled: no byte for {stall_s:g} s after {self.got / 2**20:.1f}{total} MiB"


@dataclasses.dataclass
class Pace:
    """What a host was found to bear: `width` ranges at once (the best measured), `piece` bytes a GET."""
    width: int = 1
    piece: int = PIECES[1]

    def timed(self, took: float, stall_s: float) -> None:
        """A piece took `took` s: double the next while pieces come fast, halve it when they come slowly."""
        if took < stall_s / 8:
            self.piece = min(2 * self.piece, PIECES[2])
        elif took > stall_s / 4:
            self.piece = max(self.piece // 2, PIECES[0])


_paces: dict[tuple[str, str], Pace] = {}


def pace(fs, path: str) -> Pace:
    """The Pace of the host of `path` (http: host:port; object stores: the bucket), kept for the process."""
    host = urlsplit(path).netloc or path.split("/", 1)[0]
    return _paces.setdefault((type(fs).__name__, host), Pace())


def streams() -> int:
    return max(1, int(os.environ.get("VIDFEAT_DOWNLOAD_STREAMS", "8")))


def streamed(fs, size: int | None) -> bool:
    """Whether `fs` is read on its event loop: async file systems, of a known size unless http."""
    return bool(getattr(fs, "async_impl", False)) and (bool(size) or _http(fs))


def applies(fs, size: int | None) -> bool:
    """Whether `fs` and a file of `size` bytes are read as concurrent ranges."""
    return streamed(fs, size) and bool(size) and size > RANGE and streams() > 1


def fetch(fs, path: str, local: str, size: int | None, progress: Progress, stall_s: float,
          ranges: bool) -> Future:
    """Start copying `path` (`size` bytes; None: unknown) to `local` on the event loop of `fs`, as
    concurrent ranges or as one stream. The future ends with the copy (RangesIgnored: the store read a
    range wrong); cancelling it stops the copy."""
    spans = [(s, min(s + RANGE, size)) for s in range(0, size, RANGE)] if ranges else [(0, None)]
    width = Width(pace(fs, path), streams() if ranges else 1, progress)
    return asyncio.run_coroutine_threadsafe(_copy(fs, path, local, spans, width, stall_s), fs.loop)


async def _copy(fs, path: str, local: str, spans: list, width: "Width", stall_s: float) -> None:
    fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        await _run(spans, width, _Reader(fs, path, fd, width.progress, width.pace, stall_s).read)
    finally:
        os.close(fd)


async def _run(spans: list, width: "Width", read) -> None:
    """`read(start, end)` every span, `width.now` of them at a time, in order; the first failure ends all."""
    queue, running = collections.deque(spans), set()
    try:
        while queue or running:
            while queue and len(running) < width.now:
                running.add(asyncio.ensure_future(read(*queue.popleft())))
            busy = len(running)
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for error in [task.exception() for task in done if task.exception() is not None][:1]:
                raise error
            width.ended(len(done), busy, more=bool(queue))
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


@dataclasses.dataclass
class _Reader:
    """Reads spans of `path` into the open file `fd`, counting each byte in `progress` as it lands."""
    fs: object
    path: str
    fd: int
    progress: Progress
    pace: Pace
    stall_s: float

    async def read(self, start: int, end: int | None) -> None:
        """Bytes start..end (None: to the end of the file) written at their place."""
        if _http(self.fs):
            await self._streamed(start, end)
        else:
            await self._pieces(start, self.progress.size if end is None else end)

    async def _streamed(self, start: int, end: int | None) -> None:
        """http(s): one streamed GET (fsspec's `_get_file` into a `_Sink`), with a Range header unless
        it is the whole file."""
        sink, kwargs = _Sink(self, start, end), {}
        if end is not None:
            kwargs["headers"] = {**self.fs.kwargs.get("headers", {}), "Range": f"bytes={start}-{end - 1}"}
        await self.fs._get_file(self.path, sink, chunk_size=CHUNK, **kwargs)
        if end is not None and sink.at != end:
            raise RangesIgnored(f"asked for bytes {start}-{end}, got {sink.at - start}")

    async def _pieces(self, start: int, end: int) -> None:
        """Object stores: ranged GETs of `pace.piece` bytes, the piece resized by how fast each came."""
        while start < end:
            stop, began = min(end, start + self.pace.piece), time.monotonic()
            data = await self.fs._cat_file(self.path, start=start, end=stop)
            if len(data) != stop - start:
                raise RangesIgnored(f"asked for bytes {start}-{stop}, got {len(data)}")
            start = self._write(data, start)
            self.pace.timed(time.monotonic() - began, self.stall_s)

    def _write(self, data: bytes, at: int) -> int:
        """Write `data` at offset `at`; the offset after it."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, at)
            view, at = view[written:], at + written
            self.progress.add(written)
        return at


class _Sink:
    """Where fsspec writes a streamed span: each chunk at its place, none past the span's `end`."""

    def __init__(self, reader: _Reader, start: int, end: int | None):
        self.reader, self.start, self.at, self.end = reader, start, start, end

    def write(self, data: bytes) -> int:
        if self.end is not None and self.at + len(data) > self.end:
            raise RangesIgnored(f"asked for bytes {self.start}-{self.end}, got more")
        self.at = self.reader._write(data, self.at)
        return len(data)

    def tell(self) -> int:
        return self.at

    def read(self, *args):                                     # a file-like object to fsspec; never read
        raise OSError("a download sink is not read")

    def close(self) -> None:
        pass


class Width:
    """How many ranges run at once, by the rule in the module doc; the best width measured goes to `pace`."""

    def __init__(self, pace: Pace, most: int, progress: Progress, clock=time.monotonic):
        self.pace, self.most, self.progress, self.clock = pace, most, progress, clock
        self.now = self.best_width = min(pace.width, most)
        self.settled, self.best = self.now >= most, 0.0
        self._mark()

    def _mark(self) -> None:
        self.since, self.got, self.count = self.clock(), self.progress.got, 0

    def ended(self, count: int, busy: int, more: bool) -> None:
        """`count` ranges just ended, with `busy` in flight until then and `more` waiting. A round ends
        (every stream busy throughout) with `now` ranges ended (`ROUND` at least), or sooner when none
        waits: then widen, or go back to the best width and stay."""
        self.count += count
        if self.settled or busy < self.now or (more and self.count < max(self.now, ROUND)):
            return
        rate = (self.progress.got - self.got) / max(self.clock() - self.since, 1e-9)
        if rate < GROW * self.best:
            self.now, self.settled = self.best_width, True
        else:
            self.best, self.best_width = rate, self.now
            self.now, self.settled = min(self.most, 2 * self.now), self.now >= self.most
            self._mark()
        self.pace.width = self.best_width


def _http(fs) -> bool:
    from fsspec.implementations.http import HTTPFileSystem

    return isinstance(fs, HTTPFileSystem)
