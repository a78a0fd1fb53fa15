"""Remote videos spooled to local disk: downloads that may take hours but never hang, and a spool that
cannot fill the disk.

A video at any fsspec URL that is not local is copied to `<tmp>/vidfeat-spool/<pid>-<random>/video.<ext>`
before decoding: as concurrent ranged reads where the store allows it (ranged.py), else in 4 MiB reads.
Each read has a stall deadline (`VIDFEAT_DOWNLOAD_STALL_S`, default 60 s without a byte): a transfer that flows is never cut, whatever
its length (for http(s), aiohttp's total timeout is lifted and its socket-read timeout set to the same
deadline), and one that stalls fails as `io: download stalled: no bytes for 60 s after 12.0 of 20.0 MiB`.
Before a download starts, the spool keeps `VIDFEAT_SPOOL_RESERVE_MB` (default 1024) free on its disk:
a video that does not fit fails as `io` (retried by the next run) instead of filling the node's disk.

The spool directory of a process is removed when its video is done, failed or closed; a worker killed
by Ray, by a node loss or by a signal leaves its directory behind, and the first download of any later
process on the node sweeps every directory whose process is gone.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from typing import Iterator

from pipeline.decode import ranged
from pipeline.errors import DecodeError
from pipeline.storage import DeadlineExceeded, within

CHUNK = 4 * 2**20
_swept = False


def stall_s() -> float:
    return float(os.environ.get("VIDFEAT_DOWNLOAD_STALL_S", "60"))


def spool_root() -> str:
    return os.path.join(tempfile.gettempdir(), "vidfeat-spool")


@contextlib.contextmanager
def spooled(fs, path: str, video: str, stop: threading.Event | None = None) -> Iterator[str]:
    """A local copy of `path` on `fs`, removed on exit (success, failure, or the generator closed).
    Setting `stop` ends the download at its next read (DecodeError "io": cancelled)."""
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
    """Copy `path` to `local` in CHUNK reads, each under the stall deadline; DecodeError on failure."""
    try:
        size = _size(fs, path)
        _check_room(os.path.dirname(local), size, video)
        with open(local, "wb") as dst:
            if not _copied_in_ranges(fs, path, dst, size, video, stop):
                with within(stall_s(), fs.open, path, "rb") as src:
                    _copy(src, dst, size, video, stop)
    except DecodeError:
        raise
    except FileNotFoundError as exc:
        raise _not_found(exc, video) from exc
    except PermissionError as exc:
        raise DecodeError(video, "permission_denied", f"access denied: {exc}") from exc
    except DeadlineExceeded as exc:
        raise DecodeError(video, "io", f"download stalled: no answer for {stall_s():.0f} s ({exc})") from exc
    except Exception as exc:                                       # network and storage errors of many types
        reason = str(exc) or repr(exc)
        raise DecodeError(video, "io", f"download failed: {type(exc).__name__}: {reason}") from exc


def _copied_in_ranges(fs, path: str, dst, size: int | None, video: str, stop) -> bool:
    """Whether `path` was copied as concurrent ranges (ranged.py); False (and `dst` emptied) when the
    store does not read that way, to be read as one stream."""
    if not ranged.applies(fs, size):
        return False
    try:
        ranged.copy_ranges(fs, path, dst, size, video, stall_s(), stop)
        return True
    except ranged.RangesIgnored:
        dst.seek(0)
        dst.truncate()
        return False


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


def _copy(src, dst, size: int | None, video: str, stop: threading.Event | None = None) -> None:
    got = 0
    while True:
        if stop is not None and stop.is_set():
            raise DecodeError(video, "io", "download cancelled: its decode task ended")
        try:
            data = within(stall_s(), src.read, CHUNK)
        except DeadlineExceeded:
            total = f" of {size / 2**20:.1f}" if size else ""
            raise DecodeError(video, "io", f"download stalled: no bytes for {stall_s():.0f} s after "
                                           f"{got / 2**20:.1f}{total} MiB") from None
        if not data:
            return
        dst.write(data)
        got += len(data)


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
    if _swept:
        return
    _swept = True
    try:
        entries = os.listdir(spool_root())
    except FileNotFoundError:
        return
    for name in entries:
        pid = name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(spool_root(), name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def http_options(uri: str) -> dict:
    """fsspec options for `uri`: for http(s), no total timeout and a socket-read timeout of stall_s."""
    if not uri.lower().startswith(("http://", "https://")):
        return {}
    import aiohttp

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=stall_s(),
                                                               sock_connect=stall_s())}}
