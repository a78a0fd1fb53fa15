"""Remote videos spooled to local disk: downloads that may take hours but never hang, and a spool that
cannot fill the disk.

A video at any fsspec URL that is not local is copied to `<tmp>/vidfeat-spool/<pid>-<random>/video.<ext>`
before decoding: on the file system's event loop (ranged.py: concurrent ranges where the store allows
it, else one stream), or, for a file system without one (sftp, ftp, memory), in a thread in 1 MiB reads
(there progress is seen a read, or a block of that file system, at a time).
A download is judged by its progress, never by its length: it fails as stalled only when no byte has
landed for the stall deadline (`VIDFEAT_DOWNLOAD_STALL_S`, default 60 s), as `io: download stalled: no
byte for 60 s after 12.0 of 20.0 MiB`; a watchdog looks four times a second (four times a deadline, if
that is shorter) and ends the transfer. For http(s) aiohttp's own timeouts on a transfer are lifted (the
watchdog judges; a connection still must open within the deadline). Before a download starts, the spool
keeps `VIDFEAT_SPOOL_RESERVE_MB` (default 1024) free on its disk: a video that does not fit fails as
`io` (retried by the next run) instead of filling the node's disk.

The spool directory of a process is removed when its video is done, failed or closed; a worker killed
by Ray, by a node loss or by a signal leaves its directory behind, and the first download of any later
process on the node sweeps every directory whose process is gone.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from typing import Callable, Iterator

from pipeline import scratch
from pipeline.decode import ranged
from pipeline.decode.ranged import Progress
from pipeline.errors import DecodeError
from pipeline.storage import DeadlineExceeded, within

READ = 2**20                                  # file systems without an event loop: one read of the thread
_swept = False


def stall_s() -> float:
    return float(os.environ.get("VIDFEAT_DOWNLOAD_STALL_S", "60"))


def spool_root() -> str:
    return os.path.join(tempfile.gettempdir(), "vidfeat-spool")


@contextlib.contextmanager
def spooled(fs, path: str, video: str, stop: threading.Event | None = None) -> Iterator[str]:
    """A local copy of `path` on `fs`, removed on exit (success, failure, or the generator closed).
    Setting `stop` ends the download within a quarter of a second (DecodeError "io": cancelled)."""
    sweep()
    directory = os.path.join(spool_root(), f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(directory, exist_ok=True)
    try:
        local = os.path.join(directory, "video" + os.path.splitext(path)[1][:16])
        download(fs, path, local, video, stop)
        yield local
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def download(fs, path: str, local: str, video: str, stop: threading.Event | None = None) -> None:
    """Copy `path` to `local`, judged by its progress (module doc); DecodeError on failure."""
    try:
        size = _size(fs, path)
        _check_room(os.path.dirname(local), size, video)
        _copy(fs, path, local, size, video, stop)
    except DecodeError:
        raise
    except FileNotFoundError as exc:
        raise _not_found(exc, video) from exc
    except PermissionError as exc:
        raise DecodeError(video, "permission_denied", f"access denied: {exc}") from exc
    except DeadlineExceeded as exc:
        raise DecodeError(video, "io", f"download stalled: no answer for {stall_s():g} s ({exc})") from exc
    except Exception as exc:                                       # network and storage errors of many types
        reason = str(exc) or repr(exc)
        raise DecodeError(video, "io", f"download failed: {type(exc).__name__}: {reason}") from exc


def _copy(fs, path: str, local: str, size: int | None, video: str, stop) -> None:
    """Concurrent ranges where they apply (one stream instead when the store does not honour them), else
    one stream: on the event loop of an async file system, or in a thread."""
    if not ranged.streamed(fs, size):
        progress = Progress(size)
        return _watch(*_in_thread(fs, path, local, progress), progress, video, stop)
    if ranged.applies(fs, size):
        with contextlib.suppress(ranged.RangesIgnored):
            return _fetch(fs, path, local, size, video, stop, ranges=True)
    _fetch(fs, path, local, size, video, stop, ranges=False)


def _fetch(fs, path: str, local: str, size: int | None, video: str, stop, ranges: bool) -> None:
    progress = Progress(size)
    future = ranged.fetch(fs, path, local, size, progress, stall_s(), ranges)
    _watch(future, future.cancel, progress, video, stop)


def _watch(future: concurrent.futures.Future, give_up: Callable[[], object], progress: Progress, video: str,
           stop: threading.Event | None) -> None:
    """Wait for a copy; when `stop` is set or no byte has landed for the stall deadline, `give_up` it
    and raise DecodeError "io" saying which (and how far it got)."""
    tick = min(0.25, stall_s() / 4)
    while not concurrent.futures.wait([future], timeout=tick).done:
        if stop is not None and stop.is_set():
            reason = "download cancelled: its decode task ended"
        elif progress.idle() >= stall_s():
            reason = progress.stalled(stall_s())
        else:
            continue
        give_up()
        raise DecodeError(video, "io", reason)
    future.result()


def _in_thread(fs, path: str, local: str, progress: Progress) -> tuple[concurrent.futures.Future, Callable]:
    """One stream in a daemon thread, READ bytes a read: (its future, what stops it at its next read)."""
    future, halt = concurrent.futures.Future(), threading.Event()

    def copy() -> None:
        try:
            with fs.open(path, "rb") as src, open(local, "wb") as dst:
                while not halt.is_set() and (data := src.read(READ)):
                    dst.write(data)
                    progress.add(len(data))
            future.set_result(None)
        except BaseException as exc:                               # noqa: BLE001 - handed to the watcher
            future.set_exception(exc)

    threading.Thread(target=copy, name="vidfeat-download", daemon=True).start()
    return future, halt.set


def _not_found(exc: FileNotFoundError, video: str) -> DecodeError:
    """A FileNotFoundError as what it is: fsspec's http file system raises it for any failed request
    (its cause says which): a 404 is not found, a 401/403 access denied, anything else (a refused
    connection, a 5xx) an I/O error that may pass."""
    cause = exc.__cause__
    status = getattr(cause, "status", None)
    if cause is None or status == 404 or isinstance(cause, FileNotFoundError):
        return DecodeError(video, "not_found", f"no such file: {exc}")
    if status in (401, 403):
        return DecodeError(video, "permission_denied", f"access denied: {exc} ({cause})")
    return DecodeError(video, "io", f"cannot reach {exc}: {type(cause).__name__}: {cause}")


def _size(fs, path: str) -> int | None:
    try:
        return int(within(stall_s(), fs.size, path) or 0) or None
    except (DeadlineExceeded, FileNotFoundError, PermissionError):
        raise
    except Exception:                                              # noqa: BLE001 - a size is a nicety
        return None


def _check_room(directory: str, size: int | None, video: str) -> None:
    reserve = float(os.environ.get("VIDFEAT_SPOOL_RESERVE_MB", "1024")) * 2**20
    free = shutil.disk_usage(directory).free
    if size and free - size < reserve:
        raise DecodeError(video, "io", f"no room to spool {size / 2**20:.0f} MiB in {directory}: "
                                       f"{free / 2**20:.0f} MiB free, {reserve / 2**20:.0f} MiB kept in reserve")


def sweep() -> None:
    """Remove spool directories of processes that are gone (once per process)."""
    global _swept
    if not _swept:
        _swept = True
        scratch.sweep(spool_root())


def http_options(uri: str) -> dict:
    """fsspec options for `uri`: for http(s), no timeout on a transfer (the watchdog judges it by its
    progress: a stream that waits while others flow is not cut) and a connect timeout of stall_s."""
    if not uri.lower().startswith(("http://", "https://")):
        return {}
    import aiohttp

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=None,
                                                               sock_connect=stall_s())}}
