"""The committed files of an output, as a reader lists and opens them: Parquet parts as Arrow tables, HDF5
parts as `H5Part`s, and the one retry layer (`consistent`) that makes a read that meets a file replaced
by a compaction start again from a fresh ledger state.

Only parts with a ledger record are listed, so a reader never sees a half-written or uncommitted part.
Local files are memory-mapped where the format allows: Parquet through `pa.memory_map`, HDF5 contiguous
datasets as copy-on-write `np.memmap` views; a remote HDF5 part is fetched whole to a local temporary
(removed with its `H5Part`) and read from there, never through fsspec (remote_file.py: a deadlock).
"""
from __future__ import annotations

import contextvars
import functools
import logging
import os
import weakref
from typing import Iterator

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.remote_file import local_copy
from pipeline.storage import is_local
from pipeline.store.ledger import Ledger

log = logging.getLogger(__name__)

READ_ATTEMPTS = 5          # a compaction can replace files between reading the ledger and the files
_RETRYING: contextvars.ContextVar[bool] = contextvars.ContextVar("vidfeat_read_retrying", default=False)


def consistent(read):
    """Decorator: a reader that, when a file it listed is gone (a compaction replaced it after the ledger
    was read), starts again from a fresh ledger state — so it never sees a video twice or misses one.

    Only the outermost reader retries: readers that call each other share one retry layer (at most
    `READ_ATTEMPTS` reads of the whole, not that many at every level)."""
    @functools.wraps(read)
    def again(*args, **kwargs):
        if _RETRYING.get():                       # an outer reader starts the whole read again
            return read(*args, **kwargs)
        token = _RETRYING.set(True)
        try:
            for attempt in range(READ_ATTEMPTS):
                try:
                    return read(*args, **kwargs)
                except FileNotFoundError:
                    if attempt == READ_ATTEMPTS - 1:
                        raise
                    log.info("a file was replaced while reading (compaction); reading again")
        finally:
            _RETRYING.reset(token)
    return again


def part_urls(out: str, kind: str = "videos") -> list[str]:
    """Paths (local) or URLs (remote) of the committed files of `kind` — videos | clips | hdf5 | failures —
    in commit order: what to hand to pandas, duckdb or h5py instead of a glob, which would also match
    uncommitted files."""
    ledger = Ledger(out)
    paths = ledger.committed_files(kind)
    return paths if is_local(ledger.fs) else [ledger.fs.unstrip_protocol(p) for p in paths]


def iter_tables(out: str, kind: str = "videos", columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The committed Parquet parts of `kind` (videos | clips | failures), one Arrow table each, in
    commit order: memory holds one part at a time. (An iteration that outlives a compaction of the
    output can meet a replaced file: FileNotFoundError; the other readers start again by themselves.)"""
    ledger = Ledger(out)
    local = is_local(ledger.fs)
    for path in ledger.committed_files(kind):
        if local:
            yield pq.read_table(path, columns=columns, memory_map=True)
        else:
            with ledger.fs.open(path, "rb") as fh:
                yield pq.read_table(fh, columns=columns)


@consistent
def read_table(out: str, kind: str = "videos", columns: list[str] | None = None) -> pa.Table:
    """All committed rows of `kind` (videos | clips | failures) as one Arrow table."""
    tables = list(iter_tables(out, kind, columns))
    if not tables:
        return pa.table({c: [] for c in (columns or ["video_id"])})
    return pa.concat_tables(tables)


class H5Part:
    """One committed HDF5 part. The id index is read at once; `array(name)` opens a dataset on first use:
    an np.memmap (copy-on-write) for a local contiguous dataset, else read whole (a remote part from its
    local copy, module doc). Pickles without its open arrays and copy, so a DataLoader worker re-opens
    its own maps."""

    def __init__(self, fs, path: str, local: bool):
        self.fs, self.path, self.local = fs, path, local
        self._arrays: dict[str, np.ndarray] = {}
        self._copy: str | None = None
        with self._open() as f:
            self.ids = f["video_id"].asstr()[()].tolist()
            self.uris = f["uri"].asstr()[()].tolist()
            self.offset = f["clip_offset"][()].astype(np.int64)

    def array(self, name: str) -> np.ndarray:
        """Dataset `name` of the part (e.g. "embedding", "clips/embedding"), shape and dtype as stored."""
        if name not in self._arrays:
            with self._open() as f:
                self._arrays[name] = self._map(f[name]) if self.local else f[name][()]
        return self._arrays[name]

    def _map(self, ds: h5py.Dataset) -> np.ndarray:
        offset = ds.id.get_offset()
        if offset is None or ds.chunks is not None or ds.compression is not None or ds.dtype.kind not in "fiu":
            return ds[()]
        return np.memmap(self.path, dtype=ds.dtype, mode="c", offset=offset, shape=ds.shape)

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path if self.local else self._fetched(), "r")
        except OSError as exc:                      # h5py says "can't retrieve stat info" for a file that
            if not isinstance(exc, FileNotFoundError) and not self.fs.exists(self.path):   # went meanwhile
                raise FileNotFoundError(self.path) from exc
            raise

    def _fetched(self) -> str:
        """The local copy of this remote part, fetched on first use and removed with this object."""
        if self._copy is None:
            self._copy = local_copy(self.fs, self.path)
            weakref.finalize(self, os.remove, self._copy)
        return self._copy

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}, "_copy": None}


@consistent
def h5_parts(out: str) -> list[H5Part]:
    """The committed HDF5 parts of `out`, in commit order."""
    ledger = Ledger(out)
    local = is_local(ledger.fs)
    return [H5Part(ledger.fs, path, local) for path in ledger.committed_files("hdf5")]

