"""A graceful stop: SIGTERM or SIGINT (a scheduler's preemption, Ctrl-C) lets the clips in flight finish.

The first signal asks for a stop: the driver takes no new video into account, waits for the videos it
already holds clips of (the ones in flight at the signal) for at most `run.drain_s` seconds (default 60),
and then leaves the result stream; the runner commits every finished video, folds the ledger, records
the run as interrupted and releases the lease (exit 143 for SIGTERM, 130 for SIGINT). A second signal
stops at once (`Terminated` / `KeyboardInterrupt`, what the first signal did before: finished videos are
still committed). Videos in flight at the end of the bound are not committed and the next run does them.
The runner holds one stop from taking the lease to releasing it, so a signal in another phase ends that
phase first — the claim, the fold and the run record finish, a Ray being started is left, a merge is
finished once recorded or else abandoned whole and no other is started (compaction.py) — then the run
the same way.

The driver never waits inside Ray for the next result while a stop is pending: the results are pulled by
a thread (`pulled`) and handed over through a small queue that the driver polls, so the signal handler
only sets a flag and the bound holds even when no result arrives.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from typing import Callable, Iterable, Iterator

log = logging.getLogger(__name__)

POLL_S = 0.2
_END = object()


@contextlib.contextmanager
def stop_signals(handler: Callable, passed_on: bool = False) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT go to `handler(signum, frame)` (with `passed_on`, then to the
    Python handler it replaced: a run's stop hears of it too), the previous handlers restored after.
    Only the main thread can take signals: elsewhere the block runs without."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict = {}

    def handle(signum, frame):
        handler(signum, frame)
        if callable(previous.get(signum)):
            previous[signum](signum, frame)

    installed = handle if passed_on else handler
    previous.update({sig: signal.signal(sig, installed) for sig in (signal.SIGTERM, signal.SIGINT)})
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class GracefulStop:
    """The first SIGTERM / SIGINT asks for a stop (`signal`, `since`); a second one stops at once."""

    def __init__(self, drain_s: float = 60.0, on_signal: Callable[[str, float], None] = lambda name, s: None,
                 clock: Callable[[], float] = time.monotonic):
        self.drain_s, self.on_signal, self.clock = drain_s, on_signal, clock
        self.signal: int | None = None
        self.since = 0.0
        self.waiting: set[int] | None = None            # videos in flight when the stop was noticed

    @contextlib.contextmanager
    def handling(self) -> Iterator["GracefulStop"]:
        """Within the block (main thread only), SIGTERM and SIGINT are this stop's; restored after."""
        with stop_signals(self._handle):
            yield self

    def _handle(self, signum, frame) -> None:
        from pipeline.errors import Terminated

        if self.signal is not None:                      # the second signal: stop now
            raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()
        self.signal, self.since = signum, self.clock()
        log.info("%s: finishing the clips in flight (at most %.0f s; a second signal stops at once)",
                 self.name, self.drain_s)
        self.on_signal(self.name, self.drain_s)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signal).name if self.signal is not None else None

    def done(self, in_flight: set[int]) -> bool:
        """Whether a requested stop may end the stream now: the videos in flight when it was noticed are
        finished (`in_flight`: the videos the driver still holds clips of), or the bound has passed."""
        if self.signal is None:
            return False
        if self.waiting is None:
            self.waiting = set(in_flight)
        if self.clock() - self.since >= self.drain_s:
            log.warning("%d video(s) still in flight after %.0f s: left for the next run",
                        len(self.waiting & in_flight), self.drain_s)
            return True
        return not (self.waiting & in_flight)


def pulled(results: Iterable, stop: GracefulStop, in_flight) -> Iterator:
    """The items of `results` (pulled by a thread), until a requested stop is `done` (`in_flight()`
    gives the videos in flight); an exception of the iteration is raised here."""
    items: queue.Queue = queue.Queue(maxsize=2)
    closing = threading.Event()
    threading.Thread(target=_pump, args=(results, items, closing), name="vidfeat-results", daemon=True).start()
    try:
        while not stop.done(in_flight()):
            try:
                item = items.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        closing.set()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _pump(results: Iterable, items: queue.Queue, closing: threading.Event) -> None:
    try:
        for item in results:
            if not _put(items, item, closing):
                return
        _put(items, _END, closing)
    except BaseException as exc:                                   # noqa: BLE001 - raised in the driver
        _put(items, _Raised(exc), closing)


def _put(items: queue.Queue, item, closing: threading.Event) -> bool:
    """Put `item`, waiting for room unless the driver has gone; whether it was put."""
    while not closing.is_set():
        try:
            items.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False
