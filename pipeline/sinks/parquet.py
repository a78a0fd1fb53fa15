"""Parquet parts: video rows, clip rows and failure rows, each with its explicit Arrow schema."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

import schemas


def write_table(rows: list[dict], schema: pa.Schema, path: str) -> None:
    """Rows (dicts holding every column of `schema`) → one Parquet file at local `path`."""
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), path, compression="zstd")


def write_videos(rows: list[dict], dim: int, num_classes: int, path: str) -> None:
    write_table(rows, schemas.video_schema(dim, num_classes), path)


def write_clips(rows: list[dict], dim: int, num_classes: int, path: str) -> None:
    write_table(rows, schemas.clip_schema(dim, num_classes), path)


def write_failures(rows: list[dict], path: str) -> None:
    write_table(rows, schemas.FAILURE_SCHEMA, path)
