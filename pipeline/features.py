"""Readers for downstream code: the committed features of an output directory (local or fsspec URL).

Only parts with a ledger record are read, so a reader never sees a half-written or uncommitted part.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ledger import Ledger


def read_table(out: str, kind: str = "videos", columns: list[str] | None = None) -> pa.Table:
    """All committed rows of `kind` (videos | clips | failures) as one Arrow table."""
    ledger = Ledger(out)
    tables = []
    for path in ledger.committed_files(kind):
        with ledger.fs.open(path, "rb") as fh:
            tables.append(pq.read_table(fh, columns=columns))
    if not tables:
        return pa.table({c: [] for c in (columns or ["video_id"])})
    return pa.concat_tables(tables)


def video_embeddings(out: str) -> tuple[list[str], np.ndarray]:
    """(video ids, float32 [N, D] embeddings) of every committed video, in commit order."""
    table = read_table(out, "videos", ["video_id", "embedding"])
    return table.column("video_id").to_pylist(), _matrix(table.column("embedding"))


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list float32 column → [N, D] numpy without per-row Python objects."""
    if len(column) == 0:
        return np.zeros((0, 0), np.float32)
    arr = column.combine_chunks()
    return arr.values.to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size)
