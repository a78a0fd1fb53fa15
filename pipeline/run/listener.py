"""What a run tells whoever watches it: started, a clip done, a video done, finished.

The run core never writes to the console: it calls a `RunListener`. The CLI's listener
(`pipeline.cli.console.ConsoleListener`) prints the announcement and draws the progress line; the default,
for a run started from Python, logs a line now and then through `logging`.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("pipeline.run")


class RunListener:
    """Hooks a run calls from its driver loop; each does nothing here."""

    def started(self, todo: int, total: int, out: str) -> None:
        """The run has its cluster and is about to stream `todo` of the corpus's `total` videos into `out`."""

    def clip_done(self, row: dict) -> None:
        """A clip row (or a failure row) came back from the cluster."""

    def video_done(self, event: dict) -> None:
        """A video is complete and handed to the writer: {"video": {...}} or {"failure": {...}}."""

    def stopping(self, signal_name: str, drain_s: float) -> None:
        """A signal asked the run to stop: the clips in flight get at most `drain_s` seconds (drain.py); a
        signal outside the stream (the claim, the fold, the compaction) lets that step end (runner.py)."""

    def finished(self) -> None:
        """The stream ended, normally or not."""


class LoggingListener(RunListener):
    """Logs the run's start, and the videos done and failed every `interval_s` seconds and at the end."""

    def __init__(self, interval_s: float = 60.0):
        self.interval_s, self.todo, self.done, self.failed = interval_s, 0, 0, 0
        self._last = time.monotonic()

    def started(self, todo: int, total: int, out: str) -> None:
        self.todo = todo
        log.info("extracting %d videos (%d of %d already done or failed)", todo, total - todo, total)

    def video_done(self, event: dict) -> None:
        self.done += 1
        self.failed += "failure" in event
        if time.monotonic() - self._last >= self.interval_s:
            self._last = time.monotonic()
            self.finished()

    def stopping(self, signal_name: str, drain_s: float) -> None:
        log.warning("%s: finishing the clips in flight (at most %.0f s; a second signal stops at once)",
                    signal_name, drain_s)

    def finished(self) -> None:
        log.info("%d of %d videos done, %d failed", self.done, self.todo, self.failed)
