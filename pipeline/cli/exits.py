"""How a vidfeat command ends: its exit code (one meaning each, table in cli.py's docstring), the one
line it leaves on stderr when it did not finish, SIGTERM, and leaving the process.

`exit_code` maps what a command raised to its code; `report` prints the line (and, for the unexpected,
saves the traceback to a log file); `sigterm_raises` makes SIGTERM unwind like Ctrl-C, so `finally`
blocks commit what is finished and release the lease; `exit_now` ends the process without running
native libraries' static destructors.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import sys
import threading
import traceback
from typing import Iterator, NoReturn

from pipeline.errors import ClusterLostError, LeaseLostError, Terminated, VidfeatError
from pipeline.text import printable

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_ABORTED = 0, 1, 2, 3
EXIT_UNAVAILABLE, EXIT_SOFTWARE, EXIT_IOERR, EXIT_TEMPFAIL = 69, 70, 74, 75   # sysexits.h: a service
# (the Ray cluster) failed, a bug, an I/O error, try again
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM
RESUMES = "committed work is safe; the same command resumes"


def exit_code(exc: BaseException, args: argparse.Namespace) -> int:
    """The exit code of a command that raised `exc`."""
    if isinstance(exc, FileNotFoundError) and _given(exc.filename, args):
        return EXIT_USAGE                                        # a typo on the command line
    for kind, code in ((KeyboardInterrupt, EXIT_SIGINT), (Terminated, EXIT_SIGTERM),
                       (LeaseLostError, EXIT_TEMPFAIL), (ClusterLostError, EXIT_UNAVAILABLE), (VidfeatError, EXIT_USAGE), (OSError, EXIT_IOERR)):
        if isinstance(exc, kind):
            return code
    return EXIT_SOFTWARE


def _given(filename, args: argparse.Namespace) -> bool:
    """Whether `filename` is a path the command line gave (a URL compared without its protocol)."""
    def norm(path) -> str:
        path = str(path)
        return path.split("://", 1)[1].rstrip("/") if "://" in path else os.path.abspath(path)

    return filename is not None and norm(filename) in {norm(v) for v in vars(args).values() if isinstance(v, str)}


def report(exc: BaseException, args: argparse.Namespace) -> int:
    """Print the one line for `exc` on stderr (the traceback of an I/O or unexpected error goes to a log
    file, and to stderr too with --verbose); returns the exit code."""
    code = exit_code(exc, args)
    line = _line(exc, code)
    if code in (EXIT_IOERR, EXIT_SOFTWARE):
        line += f"; {RESUMES}; {save_traceback(exc, args)}"
        if getattr(args, "verbose", False):
            traceback.print_exception(exc, file=sys.stderr)
    print(f"vidfeat {args.command}: {line}", file=sys.stderr, flush=True)
    return code


def _line(exc: BaseException, code: int) -> str:
    if code == EXIT_SIGINT:
        return f"interrupted (SIGINT); {RESUMES}"
    if code == EXIT_SIGTERM:
        return f"terminated (SIGTERM); {RESUMES}"
    if code == EXIT_UNAVAILABLE:
        return f"{printable(exc)}; {RESUMES}"
    if code == EXIT_TEMPFAIL:
        return f"lease lost: {printable(exc)}; another writer took over; committed work is safe; run again"
    if code == EXIT_USAGE:
        return f"error: {printable(exc) if isinstance(exc, VidfeatError) else describe(exc)}"
    return f"{'I/O' if code == EXIT_IOERR else 'unexpected'} error: {describe(exc)}"


def describe(exc: BaseException) -> str:
    """'PermissionError: [Errno 13] Permission denied (file: /out/ledger)': the type, the message and the
    file(s) of `exc`, on one line."""
    files = [f for f in (getattr(exc, "filename", None), getattr(exc, "filename2", None)) if f is not None]
    if isinstance(exc, OSError) and exc.strerror and files:
        message = f"[Errno {exc.errno}] {exc.strerror}"         # str(exc) would repeat the file
    else:
        message = str(exc)
    where = f" (file: {', '.join(map(str, files))})" if files else ""
    return printable(f"{type(exc).__name__}: {message}{where}")


def save_traceback(exc: BaseException, args: argparse.Namespace) -> str:
    """Append the traceback of `exc` to the command's log file (extract's own, else a new one);
    'traceback in PATH', or why it could not be saved."""
    from pipeline.cli.console import log_path

    try:
        path = getattr(args, "log_file", None) or log_path(args.command)
        with open(path, "a", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write("".join(traceback.format_exception(exc)))
    except OSError as err:
        return f"traceback not saved ({describe(err)})"
    return f"traceback in {printable(path)}"


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (elsewhere: nothing changes).
    `ray.init` puts its own handler in place, which raises SystemExit(15): `main` treats both alike."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_now(code: int) -> NoReturn:
    """End the process with `code`: flush our streams, run what is registered with atexit (Ray's
    shutdown, the decode worker pool, logging.shutdown), then `os._exit`, so the static destructors of
    native libraries never run: at teardown they sometimes abort ('terminate called without an active
    exception', pyarrow's and Ray's threads), which turned a finished command's code into 134."""
    _flush()
    atexit._run_exitfuncs()
    _flush()
    from pipeline.cli.supervise import report

    report(code)                                # to the supervisor of a run, if any (supervise.py)
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):          # a closed pipe or stream: nothing to save
            pass
