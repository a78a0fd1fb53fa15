"""Items between a decode worker and its caller: pickled with protocol 5 over a socket, large buffers out of
band in shared memory.

Large contiguous buffers in an item (numpy arrays: a clip of frames is tens of MB) are written to
anonymous shared memory (`memfd_create`) whose descriptors travel over the socket with `send_fds`, and
the caller's arrays map that memory: one copy in all instead of five through the socket. Where shared
memory is unavailable (a sandbox, a full tmpfs) the item goes through the socket whole.
"""
from __future__ import annotations

import logging
import mmap
import os
import pickle
import socket
from multiprocessing.connection import Connection
from typing import Any

OOB_MIN_BYTES = 1 << 20   # buffers this large travel in shared memory, not through the socket
MEMFD = hasattr(os, "memfd_create") and hasattr(socket, "send_fds")
log = logging.getLogger(__name__)


def send_item(conn: Connection, sock: socket.socket, item: Any) -> None:
    """Pickle `item`, its large buffers out of band in shared memory: ("item", pickle, sizes) + the fds."""
    large: list[pickle.PickleBuffer] = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:         # False: out of band
        try:
            size = buf.raw().nbytes
        except BufferError:                                       # not contiguous: in band
            return True
        if not MEMFD or size < OOB_MIN_BYTES:
            return True
        large.append(buf)
        return False

    data = pickle.dumps(item, protocol=5, buffer_callback=out_of_band)
    fds: list[int] = []
    try:
        for buf in large:
            fds.append(to_memfd(buf.raw()))
    except OSError as exc:                    # no shared memory here (a sandbox, a full tmpfs): in band
        for fd in fds:
            os.close(fd)
        log.warning("shared memory unavailable (%s); sending %d bytes through the socket", exc,
                    sum(buf.raw().nbytes for buf in large))
        data, large, fds = pickle.dumps(item, protocol=5), [], []
    try:
        conn.send(("item", data, [buf.raw().nbytes for buf in large]))
        if fds:
            socket.send_fds(sock, [b"F"], fds)
    finally:
        for fd in fds:
            os.close(fd)


def to_memfd(view: memoryview) -> int:
    fd = os.memfd_create("vidfeat-item", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, view.nbytes)
        with mmap.mmap(fd, view.nbytes) as mem:
            mem[:] = view.cast("B")
    except BaseException:
        os.close(fd)
        raise
    return fd


def unpack(data: bytes, sizes: list[int], sock: socket.socket) -> Any:
    """The item `send_item` sent: its shared-memory buffers mapped (freed with the last array using them)."""
    buffers = []
    if sizes:
        _, fds, _, _ = socket.recv_fds(sock, 1, len(sizes))
        try:
            if len(fds) != len(sizes):
                raise OSError(f"expected {len(sizes)} shared buffers from the worker, got {len(fds)}")
            buffers = [mmap.mmap(fd, size) for fd, size in zip(fds, sizes)]
        finally:
            for fd in fds:
                os.close(fd)
    return pickle.loads(data, buffers=buffers)


def picklable(exc: Exception) -> Exception:
    """`exc` if it survives pickling, else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
