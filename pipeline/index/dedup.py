"""Near-duplicates: the groups of videos (or moments) whose embeddings lie within a cosine distance.

    report = dedup(OUT, threshold=0.02)              # videos; kind="clips" for moments

Each vector's `neighbours` nearest ones are found through the output's index when it covers the output,
else through an index built in memory from the committed embeddings (exact below 4,096 vectors, ann.py);
scores are exact cosines either way (re-ranked). Pairs with 1 − cosine ≤ `threshold` join their two
videos in one group (connected components: a chain of close pairs is one group). A vector with all its
`neighbours` within the threshold may have more: the report counts them (`saturated`), and a larger
`neighbours` finds the rest.

Written, each published whole (publish.py), under OUT/dedup/: `<kind>-t<threshold>.parquet` (group,
video_id, uri[, clip_index, start_s, end_s], similarity to the group's first member; one row per member
of a group of two or more) and `<kind>-t<threshold>.json` (the report: groups, members, largest, pairs,
saturated, how the neighbours were found, and the live segments and done count it was computed from —
what it covers).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError
from pipeline.index.ann import ExactVectors
from pipeline.index.build import read_rows
from pipeline.index.searcher import Approximate, open_index
from pipeline.index.published import staging_dir
from pipeline.store.ledger import Ledger
from pipeline.store.publish import publish_bytes, publish_file


@dataclass
class DedupReport:
    kind: str
    threshold: float
    vectors: int
    groups: int
    members: int              # vectors in a group of two or more
    largest: int
    pairs: int                # pairs within the threshold found
    saturated: int            # vectors whose every neighbour looked at was within the threshold
    how: str
    table: str                # URL of the Parquet groups
    segments: list[str]
    done: int
    seconds: float


def dedup(out: str, threshold: float, kind: str = "videos", neighbours: int = 32) -> DedupReport:
    """Find and publish the near-duplicate groups of `out` (module doc)."""
    if not 0 <= threshold <= 2:
        raise ConfigError(f"--threshold is a cosine distance (1 - cosine), between 0 and 2; got {threshold}")
    start, ledger = time.perf_counter(), Ledger(out)
    state = ledger.load()
    with staging_dir() as staging:
        approx, how, rows = _searchable(ledger, state, kind, os.path.join(staging, "vectors.npy"))
        a, b, sim, saturated = close_pairs(approx, threshold, neighbours)
        group = components(len(rows), a, b)
        table = group_table(rows, group, approx.exact)
        name = f"{kind}-t{threshold:g}"
        local = os.path.join(staging, f"{name}.parquet")
        pq.write_table(table, local, compression="zstd")
        publish_file(local, ledger.url("dedup", f"{name}.parquet"))
    sizes = np.bincount(table.column("group").to_numpy()) if table.num_rows else np.zeros(0, int)
    report = DedupReport(kind, threshold, len(rows), len(sizes), table.num_rows, int(sizes.max(initial=0)),
                         len(a), saturated, how, ledger.url("dedup", f"{name}.parquet"), sorted(state.segments),
                         len(state.done_ids), time.perf_counter() - start)
    publish_bytes(json.dumps(asdict(report), indent=2).encode(), ledger.url("dedup", f"{name}.json"))
    return report


def _searchable(ledger: Ledger, state, kind: str, path: str) -> tuple[Approximate, str, pa.Table]:
    """The output's covering index, or one built from the committed embeddings; how; the rows."""
    approx, how = open_index(ledger.out, kind)
    if approx is not None:
        return approx, how, approx.rows
    rows, vectors = read_rows(ledger, state, kind, sorted(state.segments), None, "float32", path)
    built = Approximate.from_arrays(vectors)
    return built, f"{how}; an index built in memory ({built.describe()})", rows


def close_pairs(approx: Approximate, threshold: float, neighbours: int, batch: int = 4096):
    """Pairs (a < b) of rows with 1 − cosine ≤ threshold among each row's `neighbours` nearest:
    (a, b, similarity, how many rows had every neighbour within the threshold)."""
    found, saturated = [], 0
    for begin in range(0, len(approx), batch):
        rows = np.arange(begin, min(begin + batch, len(approx)))
        if approx.hidden is not None:
            rows = rows[~approx.hidden[rows]]              # a retired or redone video's old row asks nothing
        scores, hits = approx.search(approx.vectors(rows), neighbours, exclude=rows)
        close = (hits >= 0) & (scores >= 1 - threshold)
        saturated += int(close.all(axis=1).sum()) if neighbours else 0
        q = np.broadcast_to(rows[:, None], hits.shape)[close]
        found.append(np.stack([np.minimum(q, hits[close]), np.maximum(q, hits[close]), scores[close]], 1))
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 3))
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), pairs[:, 2].astype(np.float32), saturated


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of n nodes joined by edges (a[i], b[i]): int64 [n], each node labelled by the
    smallest node of its component (labels propagated along edges, then pointer jumping, to a fixpoint)."""
    label = np.arange(n, dtype=np.int64)
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def group_table(rows: pa.Table, label: np.ndarray, exact: ExactVectors) -> pa.Table:
    """One row per member of a group of two or more: group (0, 1, … in order of first member), the
    member's rows columns, and its cosine to the group's first member."""
    sizes = np.bincount(label, minlength=len(label))
    members = np.flatnonzero(sizes[label] >= 2)
    _, group = np.unique(label[members], return_inverse=True)
    sim = np.einsum("ij,ij->i", exact.rows(members), exact.rows(label[members]))
    table = rows.take(pa.array(members)).select([c for c in rows.column_names])
    table = table.add_column(0, "group", pa.array(group.astype(np.int64)))
    return table.append_column("similarity", pa.array(sim.astype(np.float32)))
