"""Storage calls with a deadline per try, patience through an outage, and then a clear failure.

Object stores fail in ways a local disk does not: a black-holed connection that is accepted but never
answered (s3fs's read timeout does not end an upload), a refused endpoint for minutes, `503 Slow Down`,
a 5xx. Every call the ledger, the lease, publishing and the readers make goes through `Guarded`, a thin
proxy over an fsspec file system (`open` for reading included: every read of a remote file is one such
call). Each try runs under a deadline (`VIDFEAT_STORAGE_DEADLINE_S`, default 60 s, plus 1 s per 4 MiB
moved); an upload or download is judged by progress instead: cut only when no byte has moved for that
long (attempt.py), so a slow link never runs two copies of a transfer at once. A try that fails in a
way that may pass (a timeout, a connection error, a throttling or server error) is tried again after a
capped exponential backoff with jitter (0.5 s, 1 s, 2 s, … up to 30 s, each between half and all of
that), for as long as the patience lasts (`VIDFEAT_STORAGE_PATIENCE_S`, default 600 s). The first
failure of a call logs one warning; a call that gets through after failing logs when. Past the patience the call raises `StorageError` (an OSError: exit 74), one line naming the
operation, the path, how long it waited and the last error. Answers that are final — not found,
exists already, permission denied — are raised at once, as they are; other errors that cannot pass
(a bad request) at once as StorageError.

The patience counts from the start of the first failed try of the outage: of this call, or of any
call of this process that failed since the last one that succeeded (`Outage`, one per process: one
command, one output store), whichever is earlier. The last try starts within the patience and is given
its whole deadline, so a call fails at most patience + one deadline after the outage met it; a call
that meets an outage older than the patience gets one try. A command that is ending with an error
while its storage is failing (`failing()`: StorageError past the patience, a second Ctrl-C while a
commit waits) does not try the store again on its way out (the runner's last commit, the lease's
withdrawal), so it ends at most patience + one deadline after the outage met it. Nothing is spent when
nothing fails: one clock reading per call.

A try that overruns its deadline is abandoned in its daemon thread (Python cannot interrupt it); the
process goes on, and `vidfeat` leaves with os._exit, so a stuck thread never holds up the exit. An
abandoned try may still land later, and the callers make that harmless (attempt.py): an upload lands
under a temporary name used once (publish.py), a lease brought back is marked released (lease.py), a
removal finds nothing removed, an exclusive publish finds its own bytes; a read retried opens the file
again.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import random
import threading
import time

from fsspec.callbacks import Callback

from pipeline.attempt import DeadlineExceeded, within  # noqa: F401 - re-exported
from pipeline.remote_file import Reader

log = logging.getLogger(__name__)

FINAL = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
GUARDED = ("ls", "cat_file", "pipe_file", "rm", "rm_file", "mv", "copy", "info", "find", "glob", "makedirs",
           "isdir", "isfile", "size", "du")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
TRANSIENT_ERRNOS = (errno.EIO, errno.EAGAIN, errno.ECONNRESET, errno.ETIMEDOUT, errno.ECONNREFUSED, errno.EPIPE,
                    errno.EBUSY, errno.EREMOTEIO, None)     # s3fs: SlowDown / 503 → EBUSY, 500 → EREMOTEIO
MOVED_PER_S = 4 * 2**20                      # a try's deadline grows by 1 s per this many bytes moved


class StorageError(OSError):
    """A storage call that could not succeed: still failing when the patience was spent, or failing in a
    way that cannot pass."""


def deadline_s() -> float:
    return float(os.environ.get("VIDFEAT_STORAGE_DEADLINE_S", "60"))


def patience_s() -> float:
    return float(os.environ.get("VIDFEAT_STORAGE_PATIENCE_S", "600"))


class Outage:
    """Since when this process's storage has been failing: the start of the earliest failed try since the
    last call that succeeded (`since`, None while nothing fails). Shared by every call (module doc)."""

    def __init__(self):
        self.since: float | None = None
        self.ok_at = float("-inf")
        self._lock = threading.Lock()

    def failed(self, started: float) -> None:
        """A try that started at `started` failed (a try older than the last success counts from it)."""
        with self._lock:
            started = max(started, self.ok_at)
            self.since = started if self.since is None else min(self.since, started)

    def succeeded(self, now: float) -> None:
        if self.since is not None:
            with self._lock:
                self.since, self.ok_at = None, now

    def past(self, patience: float, now: float) -> bool:
        """Whether the outage is older than `patience`."""
        since = self.since
        return since is not None and now - since >= patience


OUTAGE = Outage()


def unreachable() -> bool:
    """Whether this process's storage has been failing for longer than the patience, with no success
    since (a call now gets one try)."""
    return OUTAGE.past(patience_s(), time.monotonic())


def failing() -> bool:
    """Whether this process's storage is failing now (no call succeeded since one failed): a command
    that is ending with an error (StorageError past the patience, a second Ctrl-C) does not wait for it
    on its way out."""
    return OUTAGE.since is not None


def guarded(fs) -> "Guarded":
    """`fs` behind deadlines and patience (a Guarded one as it is)."""
    return fs if isinstance(fs, Guarded) else Guarded(fs)


class Guarded:
    """An fsspec file system whose I/O calls (GUARDED and the methods below) run under `call`; anything
    else passes through."""

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
        """Upload, cut only when no byte has moved for the deadline (attempt.py)."""
        return self._transfer(self.fs.put_file, local, path, os.path.getsize(local), f"upload to {path}", kwargs)

    def get_file(self, path: str, local: str, **kwargs):
        """Download, cut only when no byte has moved for the deadline (attempt.py)."""
        size = self.info(path).get("size") or 0
        return self._transfer(self.fs.get_file, path, local, size, f"download of {path}", kwargs)

    def _transfer(self, fn, source: str, target: str, size: int, what: str, kwargs: dict):
        progress = kwargs.setdefault("callback", Callback())
        return call(fn, source, target, what=what, extra_s=size / MOVED_PER_S, progress=progress, **kwargs)

    def exists(self, path: str, **kwargs) -> bool:
        """Whether `path` exists: a final answer (not found, not allowed) is no; a failure that may pass is
        waited out, never taken for a no (s3fs's own `exists` says no to a bucket it cannot reach)."""
        try:
            self.info(path, **kwargs)
        except FINAL:
            return False
        return True

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

    def open(self, path: str, mode: str = "rb", **kwargs):
        """A remote file opened for reading reads under `call` (`Reader`); local files and writing pass
        through."""
        if "r" not in mode or "+" in mode or is_local(self.fs):
            return self.fs.open(path, mode, **kwargs)
        text = {key: kwargs.pop(key) for key in ("encoding", "errors", "newline") if key in kwargs}
        reader = io.BufferedReader(Reader(self, path, kwargs, guard=_read_guard), buffer_size=2**20)
        return reader if "b" in mode else io.TextIOWrapper(reader, **{"encoding": "utf-8", **text})


def _read_guard(fn, *args, what: str, size: int):
    """How a `Reader` runs one read: a call under the deadline (grown by the bytes it moves) and patience."""
    return call(fn, *args, what=what, extra_s=size / MOVED_PER_S)


def is_local(fs) -> bool:
    """Whether `fs` (guarded or not) is the local file system."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(getattr(fs, "fs", fs), LocalFileSystem)


def call(fn, *args, what: str, extra_s: float = 0.0, progress=None, **kwargs):
    """`fn(*args, **kwargs)`, each try under a deadline (with `progress`: no byte moved for that long),
    tried again while its failure may pass and the patience lasts (see module doc)."""
    return retry(lambda: within(deadline_s() + extra_s, fn, *args, progress=progress, **kwargs), what)


def retry(attempt, what: str, *, patience: float | None = None, clock=time.monotonic, sleep=time.sleep,
          outage: Outage | None = None, jitter=random.random):
    """`attempt()`, tried again after failures that may pass until `patience` (default patience_s()) is
    spent, counted from the outage's first failed try (module doc). `clock`, `sleep`, `outage` and
    `jitter` (a number in [0, 1)) are the process's own unless a test gives its own."""
    outage = OUTAGE if outage is None else outage
    started = clock()
    ok, result = _once(attempt, what, 1, outage, started)
    if not ok:
        return _ride_out(attempt, what, result, started, patience_s() if patience is None else patience, clock,
                         sleep, outage, jitter)
    if outage.since is not None:
        outage.succeeded(clock())
    return result


def _once(attempt, what: str, tries: int, outage: Outage, started: float):
    """One try of `attempt`: (True, its result), or (False, the error) of a failure that may pass (counted in
    `outage` from `started`); a failure that cannot pass is raised (`_failed`)."""
    try:
        return True, attempt()
    except FINAL:
        raise
    except Exception as exc:                                       # noqa: BLE001 - classified in _failed
        _failed(exc, what, tries)
        outage.failed(started)
        return False, exc


def _ride_out(attempt, what: str, exc: Exception, first: float, patience: float, clock, sleep, outage: Outage,
              jitter):
    """Try again until a try succeeds or the patience is spent, counted from `first` (this call's first
    failed try) or from the outage's start if earlier; then the last error, as StorageError."""
    def begun() -> float:
        since = outage.since
        return first if since is None else min(first, since)

    tries, delay = 1, BACKOFF_FIRST_S
    if clock() < begun() + patience:
        log.warning("storage: %s failing (%s); retrying for up to %.0f s", what, _named(exc),
                    begun() + patience - clock())
    while (left := begun() + patience - clock()) > 0:
        sleep(min(delay * (0.5 + jitter() / 2), left))
        delay = min(2 * delay, BACKOFF_MAX_S)
        ok, result = _once(attempt, what, tries + 1, outage, clock())
        if not ok:
            tries, exc = tries + 1, result
            continue
        outage.succeeded(clock())
        log.info("storage: %s succeeded after %.0f s (%s)", what, clock() - first, _tries(tries + 1))
        return result
    raise StorageError(errno.EIO, f"storage: {what} failed: still failing after {clock() - begun():.0f} s "
                                  f"({_tries(tries)}; patience {patience:.0f} s): {_named(exc)}") from exc


def _failed(exc: Exception, what: str, tries: int) -> None:
    """Raise StorageError now when `exc` cannot pass by trying again; FileNotFoundError for a store's own
    "no such object" that its fsspec layer let through untranslated (`not_found`)."""
    if not_found(exc):
        raise FileNotFoundError(errno.ENOENT, f"storage: {what}: {_named(exc)}") from exc
    if not transient(exc):
        raise StorageError(errno.EIO, f"storage: {what} failed ({_tries(tries)}): {_named(exc)}") from exc


def not_found(exc: BaseException) -> bool:
    """A store's "no such object" under another name: Azure's ResourceNotFoundError (adlfs lets it through
    from a read of a blob deleted since it was opened: a file a compaction replaced), an HTTP 404."""
    return "NotFound" in type(exc).__name__ or 404 in (getattr(exc, "status_code", None), getattr(exc, "status", None))


def transient(exc: BaseException) -> bool:
    """Whether a failure may pass if tried again: timeouts, connection errors, throttling, server errors."""
    if isinstance(exc, FINAL):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError, DeadlineExceeded)):
        return True
    name = type(exc).__name__
    if any(word in name for word in ("Timeout", "Connection", "Endpoint", "ServerDisconnected", "ClientError",
                                     "ClientOSError", "ReadError", "ProtocolError", "Throttl", "SlowDown")):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def _tries(n: int) -> str:
    return f"{n} {'try' if n == 1 else 'tries'}"


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no reason given'}"


def _where(args: tuple) -> str:
    return str(args[0]) if args else ""
