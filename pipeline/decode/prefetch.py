"""Remote videos of a decode task downloaded one ahead: the next video spools while the current one decodes.

A decode task takes its videos one after another. Without prefetching, each remote video is spooled
whole (spool.py) before its first frame is decoded, and the decode slot waits for every byte: on object
storage (tens of ms to the first byte, 50–100 MB/s a stream) 0.2–0.5 s a video of 15–25 MB, before ~4 s
of decoding. `Prefetcher(items).local(uri, video)` is a drop-in for `local_copy`: it starts the download
of the item after `video` in a background thread, then waits for `video`'s own (usually long done).

Bounds and clean-up: one download at a time, at most two videos spooled per task (the one decoding and
the next); each spooled file is removed when its video is done or failed, and `close()` (the task ends,
or its generator is closed) stops a download in flight within a quarter of a second (spool.py's
watchdog) and removes what was spooled. A process that is killed leaves its spool directory to the next
process's sweep (spool.py). Failures keep their kinds: a download that failed in the background raises
its `DecodeError` (not found, access denied, I/O; stalled only when no byte came for the stall deadline,
however slowly the bytes came) when its video's turn comes. Local paths are used as they are, without a
thread.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator, Sequence

from pipeline.decode.source import resolve
from pipeline.decode.spool import spooled
from pipeline.errors import DecodeError


class Prefetcher:
    """Local copies of `items` ((uri, video) pairs, in the order they will be asked for), one ahead."""

    def __init__(self, items: Sequence[tuple[str, str]]):
        self.items = list(items)
        self.position = {video: i for i, (_, video) in enumerate(self.items)}
        self.pending: dict[int, Future] = {}
        self.stop = threading.Event()
        self.pool: ThreadPoolExecutor | None = None

    @contextlib.contextmanager
    def local(self, uri: str, video: str) -> Iterator[str]:
        """A local path of `uri` (see `local_copy`), removed on exit; the next item starts downloading."""
        i = self.position.get(video)
        if i is None or self.items[i][0] != uri:                  # not one of ours: plain, no prefetch
            from pipeline.decode.source import local_copy

            with local_copy(uri, video) as path:
                yield path
            return
        self._start(i)
        self._start(i + 1)
        with _result(self.pending.pop(i)) as path:
            yield path

    def close(self) -> None:
        """Stop a download in flight and remove every spooled file not yet handed out."""
        self.stop.set()
        for future in self.pending.values():
            if not future.cancel():
                with contextlib.suppress(Exception), _result(future):
                    pass
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, i: int) -> None:
        """Start the download of item `i`, unless it was started or is past the end. A local item is
        its path at once; a bad URL is its DecodeError, raised in its own turn, never in another's."""
        if i >= len(self.items) or i in self.pending:
            return
        uri, video = self.items[i]
        try:
            fs, path = resolve(uri, video)
        except DecodeError as exc:
            self.pending[i] = _done(exception=exc)
            return
        if fs is None:
            self.pending[i] = _done((contextlib.ExitStack(), path))
            return
        self.pool = self.pool or ThreadPoolExecutor(1, thread_name_prefix="vidfeat-prefetch")
        self.pending[i] = self.pool.submit(_spool, fs, path, video, self.stop)


def _spool(fs, path: str, video: str, stop: threading.Event) -> tuple[contextlib.ExitStack, str]:
    """Download `path` into the spool: (the stack that removes it, the local path)."""
    with contextlib.ExitStack() as stack:
        local = stack.enter_context(spooled(fs, path, video, stop=stop))
        return stack.pop_all(), local


@contextlib.contextmanager
def _result(future: Future) -> Iterator[str]:
    """The local path a download gave, removed on exit; its DecodeError raised."""
    stack, path = future.result()
    with stack:
        yield path


def _done(value=None, exception: BaseException | None = None) -> Future:
    future: Future = Future()
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(value)
    return future
