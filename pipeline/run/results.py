"""Result rows: what the inference stage hands back to the driver, and how the driver reads them.

One row per clip (or per failed video): video_id, uri, clip_index, last, start_s, end_s, valid_frames,
frame_indices [T], embedding [D], logits [C], error, stage, decode_s, infer_s, device, decode_node,
infer_node. The stage returns them as an Arrow table whose vectors are fixed-size lists and whose text is
plain strings, so that the driver deserialises a block as a few contiguous buffers (no per-row objects,
no tensor extension types) and turns a vector column into one numpy matrix. The driver's cost per
video is what bounds a cluster's rate: this is its hot path.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def to_table(columns: dict[str, np.ndarray]) -> pa.Table:
    """numpy columns (1-D, or 2-D [rows, width] vectors) → an Arrow table of plain types."""
    return pa.table({name: _array(values) for name, values in columns.items()})


def _array(values: np.ndarray) -> pa.Array:
    values = np.asarray(values)
    if values.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)), values.shape[1])
    if values.dtype == object or values.dtype.kind == "U":
        return pa.array([str(v) for v in values], pa.string())
    return pa.array(values)


def rows(table: pa.Table) -> Iterator[dict]:
    """The rows of a result table as dicts: scalars as Python values, vectors as numpy rows (views)."""
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        columns[name] = matrix(column) if pa.types.is_fixed_size_list(column.type) else column.to_pylist()
    names = list(columns)
    for values in zip(*(columns[n] for n in names)):
        yield dict(zip(names, values))


def matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column → a numpy [rows, width] array (one copy at most)."""
    width = column.type.list_size
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), width)


def total(table: pa.Table, name: str) -> float:
    """Sum of a numeric column (0 for an empty table)."""
    return float(pc.sum(table.column(name)).as_py() or 0.0)


def counts(table: pa.Table, name: str) -> dict[str, int]:
    """How many rows hold each value of a text column."""
    if name not in table.column_names:
        return {}
    found = pc.value_counts(table.column(name))
    return dict(zip(found.field("values").to_pylist(), found.field("counts").to_pylist()))
