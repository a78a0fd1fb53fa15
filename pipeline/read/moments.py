"""Moments: the nearest clips (video id, clip index, start and end seconds) of query embeddings, through the
output's clips index when it covers the output (`vidfeat index OUT --clips`), else exactly over every
committed clip embedding (in memory: build the index for large outputs).

    moments = MomentIndex.from_output(OUT)
    moments.how                                      # "approximate: the clips index covers …" / "exact: …"
    moments.search(queries, k=10)                    # per query: [{"video_id", "clip_index", "start_s",
                                                     #   "end_s", "score"}, ...], best first
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.read.features import load_clips
from pipeline.read.search import VideoIndex

MOMENT_COLUMNS = ("video_id", "clip_index", "start_s", "end_s")


class MomentIndex:
    """Clip rows (an Arrow table of MOMENT_COLUMNS) and a VideoIndex over their embeddings, row for row."""

    def __init__(self, clips: pa.Table, index: VideoIndex):
        self.clips, self.index, self.how = clips, index, index.how

    @classmethod
    def from_output(cls, out: str, *, exact: bool = False) -> "MomentIndex":
        from pipeline.index.searcher import open_index

        approximate, how = open_index(out, "clips") if not exact else (None, "exact: asked for")
        if approximate is not None:
            clips = approximate.rows.select(list(MOMENT_COLUMNS))
            return cls(clips, VideoIndex.from_approximate([""] * clips.num_rows, None, approximate, how))
        features = load_clips(out)
        counts = np.diff(features.offset)
        clips = pa.table({"video_id": np.repeat(np.array(features.ids, object), counts).tolist(),
                          "clip_index": features.clip_index, "start_s": features.start_s, "end_s": features.end_s})
        index = VideoIndex([""] * clips.num_rows, features.embedding, device="cpu")
        index.how = how
        return cls(clips, index)

    def search(self, queries, k: int = 10) -> list[list[dict]]:
        """The k nearest moments of each query embedding float [Q, D] (or [D]), best first."""
        hits = self.index.search(queries, k)
        rows = self.clips.to_pydict()
        return [[{**{c: rows[c][r] for c in MOMENT_COLUMNS}, "score": float(s)}
                 for r, s in zip(q_rows, q_scores) if r >= 0] for q_rows, q_scores in zip(hits.indices, hits.scores)]
