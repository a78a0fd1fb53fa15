"""Publish a finished local file at its final URL, whole or not at all.

On every store the file goes next to its destination under a hidden temporary name used once
(`.tmp-<name>-<random>`), then takes its name: local disk renames it (`os.replace`, atomic on POSIX);
object stores upload it (S3, GCS and Azure show an object only when its upload is complete: an
interrupted multipart upload shows nothing), then copy it server-side to the final key and delete it.
So an upload try abandoned at its deadline that lands later (storage.py) lands under its temporary,
never over a published file that a compaction has since deleted (a glob would see its videos twice):
it is garbage, which the next writer's garbage collection removes. A copy is one short request, and
one that comes late finds its source gone. `publish_once` uploads straight to a name that is itself
hidden and used once (a compaction's staged files).
Readers ignore names starting with `.` or `_`, so a leftover temporary is never read. A published local
file has the permissions a plain `open` would give it (0666 less the umask), whichever temporary it
came from.

`publish_bytes(..., exclusive=True)` publishes only if nothing exists at the URL yet, atomically with
respect to every other exclusive publish (the primitive the ledger's fencing rests on): local disk and
NFSv3+ `link(2)` of a complete temporary (fails with EEXIST; an EEXIST over our own bytes is our own
link, answered again after a lost reply, and counts as published); S3 a conditional PUT (`If-None-Match: *`,
AWS since 2024, moto, MinIO); GCS a generation precondition (`ifGenerationMatch=0`); other fsspec stores
their `pipe_file(mode="create")`. A store that cannot do it raises FileExistsError on a conflict only
where it can tell (see docs/ARCHITECTURE.md, "What is guaranteed on which store").
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Iterator

from fsspec.callbacks import Callback
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipeline.faults import failpoint
from pipeline.storage import guarded


def _umask() -> int:
    """The process's umask, read without changing it (Linux: /proc); elsewhere set and put back."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def file_mode() -> int:
    """What a plain `open` would create a file with: 0666 less the umask. Published files get it, so a
    teammate who can read the data files can read the ledger too (tempfile's files are 0600)."""
    return 0o666 & ~_umask()


def publish_file(local_path: str, url: str) -> None:
    """Move/upload `local_path` to `url` atomically (see module doc). `local_path` is consumed."""
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        _replace_local(local_path, path)
        return
    directory, name = path.rsplit("/", 1)
    tmp = f"{directory}/.tmp-{name}-{uuid.uuid4().hex[:8]}"
    publish_once(local_path, fs.unstrip_protocol(tmp))
    fs = guarded(fs)
    fs.copy(tmp, path)
    fs.rm(tmp)


def publish_once(local_path: str, url: str) -> None:
    """Publish `local_path` at `url`, a hidden name used once: on object stores one upload, no copy (a
    late landing there is harmless, module doc). `local_path` is consumed."""
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        _replace_local(local_path, path)
        return
    guarded(fs).put_file(local_path, path, callback=_UploadProgress())
    os.remove(local_path)


def _replace_local(local_path: str, path: str) -> None:
    with _temporary(path, lambda tmp: shutil.move(local_path, tmp)) as tmp:
        os.replace(tmp, path)


def publish_bytes(data: bytes, url: str, exclusive: bool = False) -> None:
    """Publish `data` as the whole content of `url`; with `exclusive`, raise FileExistsError (and change
    nothing) when `url` exists already."""
    fs, path = url_to_fs(url)
    if not isinstance(fs, LocalFileSystem):
        _pipe(guarded(fs), path, data, exclusive)
        return
    with _temporary(path, lambda tmp: _write(tmp, data)) as tmp:
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)                  # atomic, and fails if `path` exists: never overwrites
        except FileExistsError:
            if not _holds(path, data):          # not our own link (an NFSv3 LINK retransmitted after a
                raise                           # lost reply answers EEXIST for the link it just made)


def _pipe(fs, path: str, data: bytes, exclusive: bool) -> None:
    """One upload of `data` to `path` on an object store (exclusive: a conditional create)."""
    if not exclusive:
        fs.pipe_file(path, data)
        return
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        if fs.cat_file(path) != data:           # not our own first try, whose answer was lost
            raise


@contextlib.contextmanager
def _temporary(path: str, fill) -> Iterator[str]:
    """A hidden temporary next to local `path` (`.tmp-<name>-<random>`), filled by `fill(tmp)`, made
    durable with the published mode; removed on the way out whatever happens (a full disk, an error), so
    only a killed process leaves one (a writer's start sweeps those: sweep.py). An OSError that names no
    file (ENOSPC from a write) is made to name `path`, for the one line a command ends with."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".tmp-{name}-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(directory, exist_ok=True)
        fill(tmp)
        with open(tmp, "rb") as fh:
            os.fchmod(fh.fileno(), file_mode())
            os.fsync(fh.fileno())
        failpoint("publish.staged")
        yield tmp
    except OSError as exc:
        if exc.filename is None:
            exc.filename = path
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _holds(path: str, data: bytes) -> bool:
    """Whether the file at `path` holds exactly `data` (exclusive publishes carry unique bytes: a claim's
    lease id, a record's epoch and sequence), as the object-store path checks."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(data) + 1) == data
    except OSError:
        return False


class _UploadProgress(Callback):
    """Upload progress; the `publish.upload` failpoint fires once the first bytes are sent."""

    def call(self, *args, **kwargs):
        if self.value:
            failpoint("publish.upload")
        return None
