"""The nearest videos of a few query videos over a whole output, reading one Parquet part at a time.

`VideoIndex.from_output` holds every embedding of an output in memory: 1.22 M videos × 768 float32 are
3.8 GB. A report wants the neighbours of a handful of videos, and one pass over the committed parts gives
them exactly with memory for one part: each part is searched as a small `VideoIndex` and each query keeps
the best k hits seen so far. The hits are those of `VideoIndex.search_ids` over the whole output (ties
aside); `indices` are rows in commit order, as `VideoIndex.from_output` numbers them. When the output's
published index covers it (pipeline/index), the queries go through that index instead (`indices` are
then its rows): the same code as `vidfeat search`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.read.features import VideoFeatures, lookup_videos
from pipeline.read.parts import consistent, iter_tables
from pipeline.store.parquet import float_matrix
from pipeline.read.search import Hits, VideoIndex


@consistent
def nearest_videos(out: str, video_ids: Sequence[str], k: int = 10) -> Hits:
    """The k nearest committed videos (cosine of the video embeddings) of each committed video in
    `video_ids`, each query left out of its own hits; an unknown id raises ConfigError naming it."""
    if not video_ids:
        return Hits([], [], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int64))
    return nearest_to(out, lookup_videos(out, video_ids, fields=("embedding",)), k)


def nearest_to(out: str, queries: VideoFeatures, k: int = 10) -> Hits:
    """`nearest_videos` for query videos already looked up (`lookup_videos(..., fields=("embedding",))`).
    Each part is searched once for all the queries (twice when some of them are in it: a search leaves
    out one row per query, and caps k for all of its queries when it does). Through the output's index
    when that covers the output (module doc)."""
    index, _ = VideoIndex.from_index(out)
    if index is not None:
        return index.search(queries.embedding, k, exclude=np.array([index.row.get(v, -1) for v in queries.ids]))
    best: list[list[tuple]] = [[] for _ in queries.ids]       # per query: (score, id, uri, row), best first
    offset = 0
    for table in iter_tables(out, "videos", ["video_id", "uri", "embedding"]):
        if table.num_rows:
            index = VideoIndex(table.column("video_id").to_pylist(), float_matrix(table.column("embedding")),
                               table.column("uri").to_pylist())
            rows = np.array([index.row.get(vid, -1) for vid in queries.ids], np.int64)
            for group in np.flatnonzero(rows >= 0), np.flatnonzero(rows < 0):
                if len(group):
                    hits = index.search(queries.embedding[group], k, exclude=rows[group])
                    for i, q in enumerate(group):
                        best[q] = _merge(best[q], hits, i, offset, k)
            offset += table.num_rows
    return Hits([[h[1] for h in b] for b in best], [[h[2] for h in b] for b in best],
                np.array([[h[0] for h in b] for b in best], np.float32).reshape(len(best), -1),
                np.array([[h[3] for h in b] for b in best], np.int64).reshape(len(best), -1))


def _merge(best: list[tuple], hits: Hits, i: int, offset: int, k: int) -> list[tuple]:
    """A query's best hits so far and its hits in one part (row `i` of `hits`) → the best k of both."""
    found = zip(hits.scores[i].tolist(), hits.ids[i], hits.uris[i], (hits.indices[i] + offset).tolist())
    return sorted([*best, *found], key=lambda h: -h[0])[:k]
