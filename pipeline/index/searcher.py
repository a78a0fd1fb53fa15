"""An approximate index ready to answer queries: built from arrays in memory, or the published index of
an output when it covers the output (coverage.py) — and, either way, a sentence saying which and why.

    approx = Approximate.from_arrays(embeddings)                  # float [N, D]; rows are ids 0..N-1
    approx, how = open_index(OUT, "videos")                       # None and the reason when it cannot answer
    scores, rows = approx.search(unit_queries, k=10)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.index.ann import AnnParams, ExactVectors, build_ann, choose_params, search_ann, search_phrase, unit
from pipeline.index.coverage import coverage
from pipeline.index.published import load_published
from pipeline.store.ledger import Ledger


@dataclass
class Approximate:
    """A FAISS index, its parameters, the exact vectors it re-ranks with, the rows it must never return
    (`hidden`, bool [N] or None) and, for a published index, its rows table (video_id, uri, ...)."""

    ann: object
    params: AnnParams
    exact: ExactVectors
    hidden: np.ndarray | None = None
    rows: pa.Table | None = None

    @classmethod
    def from_arrays(cls, embeddings, params: AnnParams | None = None) -> "Approximate":
        vectors = unit(embeddings)
        params = params or choose_params(*vectors.shape)
        return cls(build_ann(vectors, params), params, ExactVectors(vectors))

    def __len__(self) -> int:
        return len(self.exact)

    @property
    def dim(self) -> int:
        return self.exact.vectors.shape[1]

    def describe(self) -> str:
        p = self.params
        return f"{p.factory}, {search_phrase(self.ann, p)}, {p.rerank} candidates re-ranked exactly"

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The exact unit vectors float32 [len(rows), D] of `rows`."""
        return self.exact.rows(np.asarray(rows, np.int64))

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(cosines float32 [Q, k], rows int64 [Q, k]) of float [Q, D] queries (normalised here)."""
        return search_ann(self.ann, self.params, unit(queries), k, exact=self.exact, hidden=self.hidden,
                          exclude=exclude)


def open_index(out: str, kind: str = "videos") -> tuple[Approximate | None, str]:
    """The published `kind` index of `out` when it covers every committed video, and the reason; (None,
    why not) otherwise — the caller then searches exactly and says so (`Approximate.describe` adds the
    index's parameters)."""
    ledger = Ledger(out)
    published = load_published(ledger, kind)
    flag = " --clips" if kind == "clips" else ""
    if published is None:
        return None, f"exact: {out} has no {kind} index (`vidfeat index OUT{flag}` builds one)"
    cover = coverage(published.rows, ledger.load(), published.tombstones)
    if not cover.covers:
        return None, cover.reason(kind)
    approximate = Approximate(published.ann, published.params, published.exact, cover.hidden, published.rows)
    return approximate, cover.reason(kind)
