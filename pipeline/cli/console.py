"""What a run shows on the console: our own lines only — what is about to run, one live progress line,
the summary — while Ray's and Ray Data's logs go to a log file whose path is printed.

Where Ray's console output comes from (Ray 2.60), and where each goes here:
- Python loggers `ray` and `ray.data`: `import ray` gives `ray` a stderr handler and stops it
  propagating (`ray._private.log`); `import ray.data` does the same for `ray.data`
  (`ray.data._internal.logging.configure_logging`: a console handler beside its session-directory file);
  `ray.init(configure_logging=False)` clears `ray`'s handlers, so its warnings fall to
  `logging.lastResort` (stderr). They carry the token-authentication notice of `ray.init`, Ray Data's
  execution plan and its "logging_progress" lines. `ray_logs_to_file` takes their console handlers
  away and lets them propagate to the root logger, whose log-file handler takes them and whose console
  handler (`configure_logging`) lets them through only with `--verbose`.
- Ray Data's progress display: tqdm bars on a terminal, log lines ("logging_progress") elsewhere; both are
  off when `DataContext.enable_progress_bars` is False (our progress line replaces them).
- The driver's C++ core worker writes its log to the session directory and also copies ERROR-level lines
  to file descriptor 2 (e.g. core_worker.cc's "Actor ... has constructor arguments in the object store",
  ray issues 53727 / 57733); no setting separates the two (RAY_BACKEND_LOG_LEVEL would also drop them from
  the file), so fd 2 itself is pointed at our log file for the run, and Python's `sys.stderr` at a copy of
  the original, so our own messages still reach the terminal.
- Python warnings raised in Ray's code on the driver (`warnings.warn`, e.g. Ray Data's note that an
  actor pool is larger than its input): `ray_warnings_logged` turns them into `ray.warnings` records.
- Worker processes' output: not forwarded to the driver (`ray.init(log_to_driver=False)`, runner.py).
`--verbose` leaves Ray's records, Ray Data's progress and the C++ lines on the console.

The runner calls `announce` once Ray is up, drives a `Progress` (progress.py), and the CLI prints
`print_summary`. Every id, uri, path and error message these lines show passes through
`printable` (text.py): no control character from the data reaches the terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Iterator, TextIO

from pipeline.cli.progress import Progress
from pipeline.run.listener import RunListener
from pipeline.text import printable

__all__ = ["Progress", "announce", "configure_logging", "describe_cluster", "failure_lines", "log_path",
           "native_stderr_to", "print_summary", "printable", "ray_logs_to_file", "ray_warnings_logged"]

RAY_LOGGERS = ("ray", "ray.data")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SHOWN_FAILURES = 20     # failures printed at the end of a run and by `vidfeat status`


# ====================================================================== logging

class StderrHandler(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is when a record is emitted (so it follows the swap
    made by `ray_logs_to_file`)."""

    def __init__(self, level: int = logging.NOTSET):
        super().__init__(sys.stderr)
        self.setLevel(level)
        self.setFormatter(PrintableFormatter(FORMAT))

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:         # StreamHandler.__init__ assigns it; the property ignores it
        pass


class PrintableFormatter(logging.Formatter):
    """Escapes control characters in a record's line (its message names ids and paths); a traceback
    appended below it keeps its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def configure_logging(verbose: bool) -> None:
    """The console handler: our warnings (with `verbose`: info, and Ray's records too) on stderr. The
    root level lets a log file added by `ray_logs_to_file` take info."""
    handler = StderrHandler(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        handler.addFilter(lambda record: not _is_ray(record.name))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:   # called again: replace, not add
        root.removeHandler(old)
    root.addHandler(handler)


def _is_ray(name: str) -> bool:
    return name == "ray" or name.startswith("ray.")


def log_path(command: str = "extract") -> str:
    """A new log file path: `$VIDFEAT_LOG_DIR` (default: <tempdir>/vidfeat-logs)/<command>-<time>-<pid>.log."""
    folder = os.environ.get("VIDFEAT_LOG_DIR") or os.path.join(tempfile.gettempdir(), "vidfeat-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{command}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log")


@contextlib.contextmanager
def ray_logs_to_file(path: str, verbose: bool = False) -> Iterator[str]:
    """Within the block, every Python log record at info or above — ours, Ray's, Ray Data's — goes to
    `path`, and Ray's C++ lines too; the console shows only what `configure_logging` lets through (Ray's
    records only with `verbose`; C++ lines stay on the console with `verbose`). Imports ray."""
    import ray  # noqa: F401  - its import installs the console handlers taken away here
    import ray.data

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FORMAT))
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    saved = _route_to_root(handler)
    try:
        with ray_warnings_logged():
            if verbose:
                yield path
            else:
                context.enable_progress_bars = False
                with native_stderr_to(path):
                    yield path
    finally:
        context.enable_progress_bars = bars
        _restore(handler, saved)


def _route_to_root(handler: logging.Handler) -> dict[str, tuple[bool, list[logging.Handler]]]:
    """Add `handler` to the root logger and make Ray's loggers propagate to it, without their own
    console handlers (returned, with their `propagate`, to be put back). Propagating, rather than
    adding `handler` to Ray's loggers, survives `ray.init(configure_logging=False)`, which clears the
    `ray` logger's handlers and leaves its records to `logging.lastResort` (stderr)."""
    logging.getLogger().addHandler(handler)
    saved = {}
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.propagate, [h for h in logger.handlers if _is_console(h)])
        for h in saved[name][1]:
            logger.removeHandler(h)
        logger.propagate = True
    return saved


def _restore(handler: logging.Handler, saved: dict[str, tuple[bool, list[logging.Handler]]]) -> None:
    logging.getLogger().removeHandler(handler)
    for name, (propagate, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.propagate = propagate
        for h in handlers:
            logger.addHandler(h)
    handler.close()


@contextlib.contextmanager
def ray_warnings_logged() -> Iterator[None]:
    """Python warnings raised in Ray's own code (e.g. Ray Data's UserWarning about an actor pool larger
    than its input) become records of the `ray.warnings` logger; other warnings show as usual."""
    import ray

    ray_dir, show = os.path.dirname(ray.__file__) + os.sep, warnings.showwarning

    def route(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(ray_dir):
            logging.getLogger("ray.warnings").warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = route
    try:
        yield
    finally:
        warnings.showwarning = show


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


@contextlib.contextmanager
def native_stderr_to(path: str) -> Iterator[None]:
    """Point file descriptor 2 (where C++ code and child processes write) at `path` for the block, and
    `sys.stderr` at a duplicate of the original descriptor, so Python's own stderr output is unchanged."""
    try:
        os.fstat(2)
    except OSError:                                  # no fd 2 at all: nothing to redirect
        yield
        return
    sys.stderr.flush()
    original, python_stderr = os.dup(2), sys.stderr
    target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(target, 2)
    os.close(target)
    sys.stderr = open(original, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = python_stderr
        os.dup2(original, 2)
        os.close(original)


# ====================================================================== our lines

def announce(todo: int, total: int, out: str, stream: TextIO | None = None) -> None:
    """The lines printed before a run starts: how many videos, on which devices, into which output."""
    stream = stream or sys.stdout
    print(f"extracting {todo} videos ({total - todo} of {total} already done or failed) into {printable(out)}",
          file=stream)
    print(f"on {describe_cluster()}", file=stream, flush=True)


class ConsoleListener(RunListener):
    """The CLI's view of a run (pipeline/run/listener.py): the announcement, then one live progress line
    (pipeline/cli/progress.py), drawn unless `progress` is off."""

    def __init__(self, progress: bool = True):
        self.progress, self.bars, self.streaming = progress, None, False

    def started(self, todo: int, total: int, out: str) -> None:
        announce(todo, total, out)
        self.bars, self.streaming = Progress(todo, enabled=self.progress), True

    def clip_done(self, row: dict) -> None:
        if self.bars:
            self.bars.clip_done(row)

    def video_done(self, event: dict) -> None:
        if self.bars:
            self.bars.video_done(event)

    def stopping(self, signal_name: str, drain_s: float) -> None:
        doing = f"the clips in flight (at most {drain_s:.0f} s)" if self.streaming else \
            "the step under way, then recording the run"
        print(f"\n{signal_name}: finishing {doing}; a second {signal_name} stops at once", flush=True)

    def finished(self) -> None:
        self.streaming = False
        if self.bars:
            self.bars.close()


def describe_cluster() -> str:
    """'Ray: 1 node, 2 CPUs, no GPU (inference on the CPU)' — from the connected Ray cluster."""
    import ray

    resources = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    gpu = f"{gpus:g} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU (inference on the CPU)"
    return f"Ray: {nodes} node{'s' if nodes != 1 else ''}, {cpus:g} CPUs, {gpu}"


def print_summary(s: dict, checkpoint: str | None = None, out: str | None = None,
                  stream: TextIO | None = None) -> None:
    """The end of a run: counts, throughput, time per stage, failures (SHOWN_FAILURES of them, and how
    many more), where to look next.
    `s` is a `RunSummary.to_dict()`."""
    stream = stream or sys.stdout
    lines = []
    if checkpoint == "random":
        lines.append("NOTE: random model weights (--checkpoint random): the features are meaningless.")
    lines.append(f"videos: {s['ok']} ok, {s['failed']} failed, {s['skipped']} skipped (of {s['total']}); "
                 f"clips: {s['clips']}; video: {s['video_hours']:.3f} h in {s['wall_s']:.1f} s "
                 f"({s['video_s_per_s']:.1f} video-s/s)")
    lines.append(f"time per stage (summed over workers): decode {s['decode_s']:.1f} s, inference "
                 f"{s['infer_s']:.1f} s, commit {s['commit_s']:.1f} s; inference on: "
                 f"{printable(', '.join(s['devices']) or '-')}")
    lines += failure_lines(s["failures"], s["failed"], out)
    lines += changed_lines(s.get("changed_videos", []), s.get("changed", 0), s.get("redone_changed", False))
    if out:
        lines.append(f"HTML report: vidfeat report {printable(out)}")
    print("\n".join(lines), file=stream, flush=True)


def changed_lines(changed: list[dict], total: int, redone: bool = False) -> list[str]:
    """Committed videos whose manifest uri changed (manifest drift): how many, what was done, the first
    SHOWN_FAILURES of them (escaped)."""
    if not total:
        return []
    what = "retired and extracted again" if redone else "they keep their old features (--redo-changed extracts them again)"
    lines = [f"changed: {total} committed video(s) have another uri in the manifest; {what}"]
    lines += [printable(f"  changed: {c['video_id']}: {c['committed_uri']} -> {c['uri']}") for c in changed[:SHOWN_FAILURES]]
    if total > SHOWN_FAILURES:
        lines.append(f"  ... and {total - SHOWN_FAILURES} more (`vidfeat status OUT --source MANIFEST --json`)")
    return lines


def failure_lines(failures: list[dict], total: int, out: str | None) -> list[str]:
    """Up to SHOWN_FAILURES failures, a line each (escaped: `printable`), then how many more and where
    they all are."""
    shown = failures[:SHOWN_FAILURES]
    lines = [printable(f"  failed: {f['video_id']} [{f['stage']}] {f['error']}") for f in shown]
    if total > len(shown):
        lines.append(f"  ... and {total - len(shown)} more: `vidfeat status {printable(out or 'OUT')} --json` "
                     "lists every failure, as do the Parquet files of failures/")
    return lines
