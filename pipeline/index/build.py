"""Building and extending an output's index (`vidfeat index OUT [--clips]`; after every run).

`build_index` claims the output like any writer (lease, then an epoch: `vidfeat index` never runs beside
a run or a compaction), reads the embeddings of the committed parts one segment at a time into a local
file of unit vectors (memory holds one part, not the output), trains and fills a FAISS index (ann.py)
and publishes it as a new generation (published.py).

`refresh_index` is the nightly path, for a writer that has claimed (the run, after its compaction): when
the output has an index of that kind, the videos it lacks (coverage.py) are read from the live segments
it does not hold yet, appended (no retraining: the IVF lists and codebooks stay), and published as a new
generation that adds one chunk of rows and vectors. When the index would serve badly after that — more
than half of its rows were added since it was trained, or a quarter of them are hidden (retired or
redone videos) — it is rebuilt instead, and says so.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.index.ann import AnnParams, add_vectors, build_ann, choose_params, unit
from pipeline.index.coverage import coverage, uris_of
from pipeline.index.published import (Published, load_published, local_files, next_generation, publish_generation,
                                      staging_dir)
from pipeline.index.retired import tombstone_hidden
from pipeline.store.ledger import Ledger
from pipeline.store.ledger_state import LedgerState
from pipeline.store.parquet import float_matrix
from pipeline.store.segments import parse

log = logging.getLogger(__name__)

CLIP_COLUMNS = ("clip_index", "start_s", "end_s")
REBUILD_GROWTH = 2.0          # rows / rows trained on, past which an extension rebuilds
REBUILD_HIDDEN = 0.25         # hidden rows / rows, past which an extension rebuilds


@dataclass
class IndexReport:
    kind: str
    action: str                # built | extended | rebuilt | unchanged | none
    rows: int                  # rows of the published index
    added: int                 # rows this call added
    hidden: int                # stale rows hidden (retired or redone videos)
    factory: str
    seconds: float
    generation: str


def build_index(out: str, kind: str = "videos", params: AnnParams | None = None, dtype: str = "float32") -> IndexReport:
    """Build the `kind` index of `out` from every committed part and publish it (module doc)."""
    from pipeline.store.lease import WriterLease

    ledger = Ledger(out)
    with WriterLease(ledger) as lease:
        state = ledger.claim(lease)
        return rebuild(ledger, state, kind, params, dtype)


def rebuild(ledger: Ledger, state: LedgerState, kind: str, params: AnnParams | None = None,
            dtype: str = "float32", action: str = "built") -> IndexReport:
    """Build and publish the `kind` index of `state`'s live segments (a writer that has claimed)."""
    start = time.perf_counter()
    with staging_dir() as staging:
        gen = next_generation(ledger, kind)
        rows, vectors = read_rows(ledger, state, kind, sorted(state.segments), None, dtype,
                                  os.path.join(staging, f"{gen}.vectors.npy"))
        params = params or choose_params(len(vectors), vectors.shape[1])
        ann = build_ann(vectors, params)
        manifest = _manifest(gen, kind, params, state, ann.ntotal, ann.ntotal, vectors, [_chunk(gen, len(rows))])
        publish_generation(ledger, kind, manifest, local_files(gen, ann, rows, vectors, staging))
    log.info("%s: %s index of %d rows (%s) published as %s", ledger.out, kind, ann.ntotal, params.factory, gen)
    return IndexReport(kind, action, ann.ntotal, ann.ntotal, 0, params.factory, time.perf_counter() - start, gen)


def refresh_index(ledger: Ledger, state: LedgerState, kind: str) -> IndexReport:
    """Extend `kind`'s index with what it lacks of `state`, or rebuild it (module doc); no index: none."""
    start = time.perf_counter()
    published = load_published(ledger, kind)
    if published is None:
        return IndexReport(kind, "none", 0, 0, 0, "", 0.0, "")
    cover = coverage(published.rows, state, published.tombstones)
    published = tombstone_hidden(ledger, kind, published, cover)      # retired or redone: hidden for good
    trained = published.manifest.get("trained_rows", published.rows.num_rows)
    grown = (published.rows.num_rows + len(cover.lacking)) / max(trained, 1)      # clips: at least
    hidden = float(cover.hidden.mean()) if len(cover.hidden) else 0.0
    if grown > REBUILD_GROWTH or hidden > REBUILD_HIDDEN:         # grown: parameters chosen again for its size
        params = None if grown > REBUILD_GROWTH else published.params
        return rebuild(ledger, state, kind, params, published.manifest["dtype"], action="rebuilt")
    if cover.covers and published.segments == state.segments:
        return IndexReport(kind, "unchanged", published.rows.num_rows, 0, int(cover.hidden.sum()),
                           published.params.factory, time.perf_counter() - start, published.manifest["generation"])
    return _extend(ledger, state, kind, published, cover.lacking, start)


def _extend(ledger: Ledger, state: LedgerState, kind: str, published: Published, lacking: pa.Array,
            start: float) -> IndexReport:
    """Append the `lacking` videos' rows (read from the segments the index does not hold) and publish;
    with none to add (a compaction renamed segments), only a manifest naming the same files."""
    old = published.manifest
    with staging_dir() as staging:
        gen = next_generation(ledger, kind)
        unread = sorted(state.segments - published.segments) if len(lacking) else []    # none lacks: none read
        rows, vectors = read_rows(ledger, state, kind, unread, lacking, old["dtype"],
                                  os.path.join(staging, f"{gen}.vectors.npy"))
        manifest = {**old, "generation": gen, "segments": sorted(state.segments), "done": len(state.done_ids),
                    "created_at": time.time()}
        files = {}
        if rows.num_rows:
            add_vectors(published.ann, np.asarray(vectors, np.float32))
            manifest.update(faiss=f"{gen}.faiss", rows=published.ann.ntotal,
                            chunks=old["chunks"] + [_chunk(gen, rows.num_rows)])
            files = local_files(gen, published.ann, rows, vectors, staging)
        publish_generation(ledger, kind, manifest, files)
    every = pa.concat_tables([published.rows, rows.select(published.rows.column_names)]) if rows.num_rows else \
        published.rows
    hidden = int(coverage(every, state, published.tombstones).hidden.sum())
    return IndexReport(kind, "extended", manifest["rows"], rows.num_rows, hidden, published.params.factory,
                       time.perf_counter() - start, gen)


def refresh_all(ledger: Ledger) -> list[IndexReport]:
    """`refresh_index` for every kind the output has an index of (a writer that has claimed)."""
    from pipeline.index.published import KINDS

    state = ledger.load()
    return [r for r in (refresh_index(ledger, state, kind) for kind in KINDS) if r.action != "none"]


def _chunk(gen: str, count: int) -> dict:
    return {"rows": f"{gen}.rows.parquet", "vectors": f"{gen}.vectors.npy", "count": count}


def _manifest(gen: str, kind: str, params: AnnParams, state: LedgerState, rows: int, trained: int,
              vectors: np.ndarray, chunks: list[dict]) -> dict:
    return {"generation": gen, "kind": kind, "params": params.to_dict(), "rows": rows, "trained_rows": trained,
            "dim": int(vectors.shape[1]), "dtype": str(vectors.dtype), "faiss": f"{gen}.faiss", "chunks": chunks,
            "segments": sorted(state.segments), "done": len(state.done_ids), "created_at": time.time()}


def read_rows(ledger: Ledger, state: LedgerState, kind: str, segments: list[str], only: pa.Array | None,
              dtype: str, path: str) -> tuple[pa.Table, np.ndarray]:
    """Rows and unit vectors of the `kind` files of `segments` (of `state`), restricted to the videos
    `only` (None: all), in segment order; vectors written to the .npy file `path` (memory-mapped)."""
    files = _files(ledger, state, kind, segments)
    columns = ["video_id", "embedding", *(CLIP_COLUMNS if kind == "clips" else ())]
    picked = [_selected(ledger, f, only) for f in files]         # a file with none of `only` is not read again
    dim = _dim(ledger, files)
    shape = (sum(count for count, _ in picked), dim)
    vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
    tables, at = [], 0
    for f, (count, keep) in zip(files, picked):
        if not count:
            continue
        table = _read(ledger, f, columns, keep)
        vectors[at:at + table.num_rows] = unit(float_matrix(table.column("embedding")))
        at += table.num_rows
        tables.append(table.drop_columns(["embedding"]))
    rows = pa.concat_tables(tables) if tables else _empty_rows(kind)
    rows = rows.append_column("uri", uris_of(state, rows.column("video_id")))
    return rows, vectors


def _files(ledger: Ledger, state: LedgerState, kind: str, segments: list[str]) -> list[str]:
    wanted = set(segments)
    return [p for p in ledger.committed_files(kind, state) if parse(p.rsplit("/", 1)[-1])[0] in wanted]


def _selected(ledger: Ledger, path: str, only: pa.Array | None) -> tuple[int, pa.Array | None]:
    """The rows of the Parquet file `path` that hold the videos `only`: (how many, a mask; None: every
    row, from the footer). Only the id column is read: a merged segment of old videos costs no more."""
    with ledger.fs.open(path, "rb") as fh:
        parquet = pq.ParquetFile(fh)
        if only is None:
            return parquet.metadata.num_rows, None
        keep = pc.is_in(parquet.read(columns=["video_id"]).column("video_id"), value_set=only)
        return int(pc.sum(keep).as_py() or 0), keep


def _read(ledger: Ledger, path: str, columns: list[str], keep: pa.Array | None) -> pa.Table:
    """`columns` of the Parquet file `path`, the rows `keep` marks (None: all)."""
    with ledger.fs.open(path, "rb") as fh:
        table = pq.ParquetFile(fh).read(columns=columns)
    return table if keep is None else table.filter(keep)


def _dim(ledger: Ledger, files: list[str]) -> int:
    if not files:
        return 0
    with ledger.fs.open(files[0], "rb") as fh:
        return pq.read_schema(fh).field("embedding").type.list_size


def _empty_rows(kind: str) -> pa.Table:
    fields = [("video_id", pa.string())] + ([("clip_index", pa.int32()), ("start_s", pa.float64()),
                                             ("end_s", pa.float64())] if kind == "clips" else [])
    return pa.table({n: pa.array([], t) for n, t in fields})
