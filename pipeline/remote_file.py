"""A remote file opened for reading through storage's guarded calls (storage.Guarded.open).

Each read is a positioned read run by `guard(fn, *args, what=..., size=...)` — in storage.py, a call under
a deadline, retried through an outage for the patience — so a reader that meets an outage mid-file waits
like any other call instead of failing on its first error.

A file that a library reads under a lock of its own is fetched whole first (`local_copy`): h5py holds
its global lock while it reads through a Python file object, and a read through fsspec runs on fsspec's
event-loop thread, where garbage collection may free an h5py object, which takes that lock: the two wait
for each other for ever. h5py therefore opens only local files, never a file read through fsspec.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from typing import Callable, Iterator


def local_copy(fs, path: str) -> str:
    """`path` of the store `fs` (storage.Guarded: a download judged by progress) fetched whole into a new
    local temporary file; its path, which the caller removes."""
    fd, local = tempfile.mkstemp(prefix="vidfeat-remote-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        fs.get_file(path, local)
    except BaseException:
        os.remove(local)
        raise
    return local


@contextlib.contextmanager
def readable_path(fs, path: str, local: bool) -> Iterator[str]:
    """A local path holding `path`'s bytes: `path` itself when `local`, else a `local_copy` removed after."""
    if local:
        yield path
        return
    copy = local_copy(fs, path)
    try:
        yield copy
    finally:
        os.remove(copy)


class Reader(io.RawIOBase):
    """A remote file read through `call`: each read is a positioned read, a try of its own. The store's
    file object is taken by a try and given back when it ends well; a try that fails closes it, and one
    abandoned at its deadline keeps it (closing it when it ends), so the next try opens another: no two
    tries share one."""

    def __init__(self, fs, path: str, kwargs: dict, guard: Callable):
        super().__init__()
        self.fs, self.path, self.kwargs, self.guard = fs, path, kwargs, guard
        self.size = fs.info(path)["size"]               # FileNotFoundError here, as fsspec's open raises it
        self.pos, self.tries = 0, 0
        self._handle = None
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), max(0, self.size - self.pos))
        if not want:
            return 0
        data = self.guard(self._read_at, self.pos, want, what=f"read of {self.path} at {self.pos}", size=want)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def _read_at(self, pos: int, size: int) -> bytes:
        with self._lock:
            self.tries += 1
            mine, handle, self._handle = self.tries, self._handle, None
        try:
            handle = handle or self.fs.fs.open(self.path, "rb", **self.kwargs)
            handle.seek(pos)
            data = handle.read(size)
        except BaseException:
            _close(handle)
            raise
        with self._lock:
            if mine == self.tries and not self.closed:          # not abandoned meanwhile
                self._handle, handle = handle, None
        _close(handle)
        return data

    def close(self) -> None:
        with self._lock:
            handle, self._handle = self._handle, None
        _close(handle)
        super().close()


def _close(handle) -> None:
    """Close a read-only file of the store, if any (nothing to lose: errors are ignored)."""
    if handle is not None:
        try:
            handle.close()
        except Exception:                                       # noqa: BLE001 - see docstring
            pass
