"""Storage calls with a deadline, a bounded retry, and then a clear failure.

Object stores fail in ways a local disk does not: a black-holed connection that is accepted but never
answered (s3fs's read timeout does not end an upload), a refused endpoint for half a minute, a 503. Every
call the ledger, the lease and publishing make goes through `Guarded`, a thin proxy over an fsspec file
system: each call runs under a deadline (`VIDFEAT_STORAGE_DEADLINE_S`, default 60 s, plus 1 s per 4 MiB
uploaded), is retried `VIDFEAT_STORAGE_ATTEMPTS` times in all (default 3, with backoff) when it fails in
a way that may pass (a timeout, a connection error, a server error), and then raises `StorageError`
(an OSError: exit 74) naming the operation, the path and what happened. Answers that are final —
not found, exists already, permission denied — are raised at once, as they are.

A call that overruns its deadline is abandoned in its daemon thread (Python cannot interrupt it); the
process goes on, and `vidfeat` leaves with os._exit, so a stuck thread never holds up the exit. A retry
of an operation whose first try may have succeeded meanwhile is made safe by the callers (a removal that
finds nothing removed, an exclusive publish that finds its own bytes).
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

FINAL = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
GUARDED = ("ls", "cat_file", "pipe_file", "put_file", "get_file", "rm", "rm_file", "mv", "copy", "exists", "info",
           "find", "glob", "makedirs", "isdir", "isfile", "size", "du")


class StorageError(OSError):
    """A storage call that failed after its retries (or overran its deadline every time)."""


class DeadlineExceeded(TimeoutError):
    pass


def deadline_s() -> float:
    return float(os.environ.get("VIDFEAT_STORAGE_DEADLINE_S", "60"))


def attempts() -> int:
    return max(1, int(os.environ.get("VIDFEAT_STORAGE_ATTEMPTS", "3")))


def guarded(fs) -> "Guarded":
    """`fs` behind deadlines and retries (a Guarded one as it is)."""
    return fs if isinstance(fs, Guarded) else Guarded(fs)


class Guarded:
    """An fsspec file system whose I/O calls (GUARDED) run under `call`; anything else passes through."""

    def __init__(self, fs):
        self.fs = fs

    def __getattr__(self, name: str):
        if name == "fs":                            # not set yet (unpickling): no recursion
            raise AttributeError(name)
        attr = getattr(self.fs, name)
        if name not in GUARDED:
            return attr
        return lambda *args, **kwargs: call(attr, *args, what=f"{name} {_where(args)}", **kwargs)

    def __reduce__(self):
        return Guarded, (self.fs,)

    def put_file(self, local: str, path: str, **kwargs):
        extra = os.path.getsize(local) / (4 * 2**20)
        return call(self.fs.put_file, local, path, what=f"upload to {path}", extra_s=extra, **kwargs)

    def rm(self, path, *args, **kwargs) -> None:
        """Remove; a path already gone counts as removed (a retry after a lost answer, a concurrent fold)."""
        try:
            call(self.fs.rm, path, *args, what=f"remove {_where((path,))}", **kwargs)
        except FileNotFoundError:
            pass

    def mv(self, src: str, dst: str, **kwargs) -> None:
        """Move; a source gone with its destination there counts as moved (a retry after a lost answer)."""
        try:
            call(self.fs.mv, src, dst, what=f"move {src} to {dst}", **kwargs)
        except FileNotFoundError:
            if not self.exists(dst):
                raise


def is_local(fs) -> bool:
    """Whether `fs` (guarded or not) is the local file system."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(getattr(fs, "fs", fs), LocalFileSystem)


def call(fn, *args, what: str, extra_s: float = 0.0, **kwargs):
    """`fn(*args, **kwargs)` under a deadline, retried while its failure may pass (see module doc)."""
    tries = attempts()
    for attempt in range(1, tries + 1):
        try:
            return within(deadline_s() + extra_s, fn, *args, **kwargs)
        except FINAL:
            raise
        except Exception as exc:                                   # noqa: BLE001 - classified below
            if not transient(exc) or attempt == tries:
                raise StorageError(errno.EIO, f"storage: {what} failed after {attempt} attempt(s): "
                                              f"{type(exc).__name__}: {exc or 'no reason given'}") from exc
            log.warning("storage: %s failed (%s: %s); trying again (%d of %d)", what, type(exc).__name__, exc,
                        attempt + 1, tries)
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
    raise AssertionError("unreachable")


def within(seconds: float, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in a daemon thread; DeadlineExceeded if it has not returned in `seconds`."""
    done, box = threading.Event(), {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:                               # noqa: BLE001 - handed to the caller
            box["error"] = exc
        done.set()

    threading.Thread(target=run, name="vidfeat-storage", daemon=True).start()
    if not done.wait(seconds):
        raise DeadlineExceeded(f"no answer within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def transient(exc: BaseException) -> bool:
    """Whether a failure may pass if tried again: timeouts, connection and server errors."""
    if isinstance(exc, FINAL):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError, DeadlineExceeded)):
        return True
    name = type(exc).__name__
    if any(word in name for word in ("Timeout", "Connection", "Endpoint", "ServerDisconnected", "ClientError",
                                     "ClientOSError", "ReadError", "ProtocolError", "Throttl", "SlowDown")):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.EAGAIN, errno.ECONNRESET, errno.ETIMEDOUT,
                                                      errno.ECONNREFUSED, errno.EPIPE, None)


def _where(args: tuple) -> str:
    return str(args[0]) if args else ""
