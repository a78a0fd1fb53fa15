"""Parquet parts: video rows, clip rows and failure rows, each with its explicit Arrow schema."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas


def write_table(rows: list[dict], schema: pa.Schema, path: str) -> None:
    """Rows (dicts holding every column of `schema`) → one Parquet file at local `path`."""
    pq.write_table(to_table(rows, schema), path, compression="zstd")


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows → an Arrow table of `schema`; fixed-size float lists are stacked as one array, not row by row."""
    return pa.Table.from_arrays([_column([r.get(f.name) for r in rows], f.type) for f in schema], schema=schema)


def _column(values: list, type_: pa.DataType) -> pa.Array:
    if pa.types.is_fixed_size_list(type_) and values:
        flat = np.stack([np.asarray(v, np.float32) for v in values]).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, type_.value_type), type_.list_size)
    if pa.types.is_list(type_) and values and all(isinstance(v, np.ndarray) for v in values):
        offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
        flat = np.concatenate(values).astype(type_.value_type.to_pandas_dtype())
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type_.value_type))
    return pa.array(values, type_)


def float_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list float32 column → a writable float32 [N, D] array, copied once, chunk by chunk,
    without per-row Python objects."""
    width = getattr(column.type, "list_size", 0)          # an empty column keeps its width: (0, D)
    if len(column) == 0:
        return np.zeros((0, width), np.float32)
    matrix = np.empty((len(column), width), np.float32)
    row = 0
    for chunk in column.chunks:
        matrix[row:row + len(chunk)] = chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), width)
        row += len(chunk)
    return matrix


def write_videos(rows: list[dict], dim: int, num_classes: int, path: str) -> None:
    write_table(rows, schemas.video_schema(dim, num_classes), path)


def write_clips(rows: list[dict], dim: int, num_classes: int, path: str) -> None:
    write_table(rows, schemas.clip_schema(dim, num_classes), path)


def write_failures(rows: list[dict], path: str) -> None:
    write_table(rows, schemas.FAILURE_SCHEMA, path)
