"""One live progress line of a run: videos and clips done, failures so far, video-hours per hour, ETA.
It shows counts and times only (no id or path from the data)."""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import Callable, TextIO


def _clock(seconds: float) -> str:
    """3725 → '1:02:05', 65 → '1:05'."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One live progress line: videos and clips done, failures so far, video-hours per hour, ETA.

    On a terminal the line is redrawn in place about twice a second; on anything else (CI logs,
    `ray job submit` logs) a complete line is printed every `interval_s` seconds (default 30, or
    $VIDFEAT_PROGRESS_INTERVAL_S), and once at the end. Updates come from the driver loop; a background
    thread prints, so the line keeps its clock running while no result arrives. Elapsed time, rate and
    ETA are read from `clock` (seconds, monotonic; a test passes its own).
    """

    def __init__(self, videos: int, enabled: bool = True, stream: TextIO | None = None,
                 interval_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stdout
        self.interactive = _isatty(self.stream)
        default = 0.5 if self.interactive else float(os.environ.get("VIDFEAT_PROGRESS_INTERVAL_S", 30))
        self.interval_s = interval_s if interval_s is not None else default
        self.total, self.videos, self.failed, self.clips, self.video_s = videos, 0, 0, 0, 0.0
        self.clock = clock
        self.started = clock()
        self._lock, self._stop, self._width = threading.Lock(), threading.Event(), 0
        self._thread = threading.Thread(target=self._tick, name="vidfeat-progress", daemon=True)
        self.enabled = enabled
        if enabled:
            self._thread.start()

    def video_done(self, event: dict) -> None:
        """A video finished: `event` is {"video": {..., "duration_s"}} or {"failure": {...}}."""
        with self._lock:
            self.videos += 1
            if "failure" in event:
                self.failed += 1
            else:
                self.video_s += float(event["video"].get("duration_s", 0.0))

    def clip_done(self, row: dict | None = None) -> None:
        """A clip came back from inference (a row with an `error` is a failed video, not a clip)."""
        if row is None or not row.get("error"):
            with self._lock:
                self.clips += 1

    def line(self) -> str:
        """The progress line as of now."""
        with self._lock:
            elapsed = self.clock() - self.started
            videos, failed, clips, video_s = self.videos, self.failed, self.clips, self.video_s
        rate = video_s / elapsed if elapsed > 0 else 0.0
        eta = "ETA " + (_clock(elapsed / videos * (self.total - videos)) if videos else "?")
        failures = f" ({failed} failed)" if failed else ""
        return (f"videos {videos}/{self.total}{failures} | clips {clips} | {rate:.2f} video-h/h | "
                f"elapsed {_clock(elapsed)} | {'done' if videos >= self.total else eta}")

    def close(self) -> None:
        """Stop the clock and leave the final line on the console."""
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join()
        self._draw(final=True)
        self.enabled = False

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        text = self.line()
        if self.interactive:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            text = text[:width]
            self.stream.write("\r" + text.ljust(self._width) + ("\n" if final else ""))
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
