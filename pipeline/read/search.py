"""Cosine nearest neighbours over video embeddings: exact on torch (CPU, or CUDA when there is one), or
approximate through an index (pipeline/index: FAISS, candidates re-ranked with the exact vectors).

    index = VideoIndex.from_output(OUT)             # the output's index when it covers it, else exact
    index.how                                        # "approximate: the videos index covers all …" / "exact: …"
    hits = index.search_ids(["video-a"], k=10)      # the query video itself is left out
    hits.ids[0], hits.scores[0]                      # 10 ids, float32 cosines, best first
    VideoIndex.build(ids, embeddings)                # approximate, from arrays in memory
    VideoIndex(ids, embeddings)                      # exact, from arrays in memory

Exact: the index L2-normalises its N rows once. A search normalises a batch of queries, multiplies it by the
index `chunk_rows` rows at a time, keeps each chunk's top k (`torch.topk`) and then the top k of those:
exact (the ranking of a full matmul, ties aside) with memory O(query_batch × chunk_rows) whatever N.
Approximate hits have exact cosine scores; `indices` are then rows of the index. The CLI: pipeline/cli/search.py.

Class names: the logits of HowTo100M's 1059 classes have no published names, so classes are indexed by
number; a csv `class_index,name` gives names where one exists (`read_class_names`, `top_classes`).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.read.features import VideoFeatures, load_videos, lookup_videos

log = logging.getLogger(__name__)

SKINNY = 256          # query batches up to this size multiply as index @ queriesᵀ (see _cosines)


@dataclass
class Hits:
    """Results of Q queries, best first: `ids[q][j]` is the j-th nearest video of query q, `uris` alike;
    scores float32 [Q, k] (cosine similarity, descending); indices int64 [Q, k] (rows of the index)."""

    ids: list[list[str]]
    uris: list[list[str]]
    scores: np.ndarray
    indices: np.ndarray


class VideoIndex:
    """Exact cosine search over embeddings float [N, D] with ids (N strings) and optional uris."""

    def __init__(self, ids: Sequence[str], embeddings, uris: Sequence[str] | None = None, *,
                 device: str | torch.device | None = None, query_batch: int = 1024, chunk_rows: int = 65536):
        self._name(ids, embeddings, uris)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.vectors = _normalised(embeddings, self.device)          # float32 [N, D], unit rows
        self.query_batch, self.chunk_rows = query_batch, chunk_rows
        self.approximate, self.how = None, "exact: built from arrays"
        log.debug("index of %d videos × %d dims on %s", len(self.ids), self.vectors.shape[1], self.device)

    def _name(self, ids: Sequence[str], rows, uris: Sequence[str] | None, hidden=None) -> None:
        if len(ids) != len(rows):
            raise ConfigError(f"{len(ids)} ids for {len(rows)} embeddings")
        self.ids, self.uris = list(ids), list(uris) if uris is not None else [""] * len(ids)
        shown = range(len(self.ids)) if hidden is None else (~hidden).nonzero()[0].tolist()
        self.row = {self.ids[i]: i for i in shown}

    @classmethod
    def build(cls, ids: Sequence[str], embeddings, uris: Sequence[str] | None = None, *, params=None) -> "VideoIndex":
        """An approximate index (FAISS, pipeline/index/ann.py) of float [N, D] `embeddings` in memory;
        `params` (an `AnnParams`) overrides the measured choice."""
        from pipeline.index.searcher import Approximate

        approximate = Approximate.from_arrays(embeddings, params)
        return cls.from_approximate(ids, uris, approximate, "approximate: built from arrays")

    @classmethod
    def from_approximate(cls, ids, uris, approximate, how: str) -> "VideoIndex":
        """A VideoIndex over a `pipeline.index.searcher.Approximate` (row i named ids[i], uris[i])."""
        self = cls.__new__(cls)
        self._name(ids, approximate.exact.vectors, uris, approximate.hidden)
        self.approximate, self.how, self.vectors = approximate, f"{how} ({approximate.describe()})", None
        return self

    @classmethod
    def from_features(cls, videos: VideoFeatures, **kw) -> "VideoIndex":
        return cls(videos.ids, videos.embedding, videos.uris, **kw)

    @classmethod
    def from_output(cls, out: str, source: str = "parquet", *, exact: bool = False, **kw) -> "VideoIndex":
        """The index of every committed video of output directory `out`: its published index when that
        covers the output (and not `exact`), else exact over the committed embeddings. `how` says which
        and why."""
        found, how = cls.from_index(out) if not exact else (None, "exact: asked for")
        if found is not None:
            return found
        index = cls.from_features(load_videos(out, source=source), **kw)
        index.how = how
        return index

    @classmethod
    def from_index(cls, out: str) -> tuple["VideoIndex | None", str]:
        """(the output's published videos index, how) when it covers the output, else (None, why not)."""
        from pipeline.index.searcher import open_index

        approximate, how = open_index(out, "videos")
        if approximate is None:
            return None, how
        rows = approximate.rows
        ids, uris = rows.column("video_id").to_pylist(), rows.column("uri").to_pylist()
        return cls.from_approximate(ids, uris, approximate, how), how

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.approximate.dim if self.approximate is not None else self.vectors.shape[1]

    def rows(self, video_ids: Sequence[str]) -> np.ndarray:
        """int64 rows of `video_ids`; an id not in the index raises ConfigError naming it."""
        unknown = [v for v in video_ids if v not in self.row]
        if unknown:
            raise ConfigError(f"unknown video id(s) {unknown[:10]}: not among the {len(self)} committed videos")
        return np.array([self.row[v] for v in video_ids], np.int64)

    def search(self, queries, k: int = 10, *, exclude: np.ndarray | None = None) -> Hits:
        """The k nearest videos of each query embedding, queries float [Q, D] or [D] (numpy, or torch on
        any device). `exclude` int64 [Q]: a row to leave out of each query's hits (-1: none). k is capped
        at what remains."""
        q = queries.float() if isinstance(queries, torch.Tensor) else _tensor(np.asarray(queries, np.float32))
        q = q.reshape(-1, q.shape[-1])
        if q.shape[1] != self.dim and len(self):
            raise ConfigError(f"queries have {q.shape[1]} dimensions, the index {self.dim}")
        if self.approximate is not None:
            return self._search_approximate(q.cpu().numpy(), k, exclude)
        exclude = torch.full((len(q),), -1) if exclude is None else torch.as_tensor(exclude, dtype=torch.int64)
        k = max(0, min(k, len(self) - int((exclude >= 0).any())))
        scores, rows = [], []
        for start in range(0, len(q), self.query_batch):
            s, r = self._topk(q[start:start + self.query_batch], k, exclude[start:start + self.query_batch])
            scores.append(s.cpu())
            rows.append(r.cpu())
        return self._hits(torch.cat(scores) if scores else torch.zeros(0, k),
                          torch.cat(rows) if rows else torch.zeros(0, k, dtype=torch.int64))

    def search_ids(self, video_ids: Sequence[str], k: int = 10) -> Hits:
        """The k nearest videos of each committed video in `video_ids`, each query left out of its hits."""
        rows = self.rows(video_ids)
        if self.approximate is not None:
            return self.search(self.approximate.vectors(rows), k, exclude=rows)
        return self.search(self.vectors[torch.from_numpy(rows).to(self.device)], k, exclude=rows)

    def _search_approximate(self, queries: np.ndarray, k: int, exclude) -> Hits:
        """`search` through the approximate index; k is capped at the rows it may return."""
        hidden = self.approximate.hidden
        shown = len(self.ids) - int(hidden.sum() if hidden is not None else 0)
        shown -= int(exclude is not None and (np.asarray(exclude) >= 0).any())
        scores, rows = self.approximate.search(queries, max(0, min(k, shown)), exclude)
        return self._hits(torch.from_numpy(scores), torch.from_numpy(rows))

    @torch.inference_mode()
    def _topk(self, queries: torch.Tensor, k: int, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """queries float32 [B, D] → (scores [B, k], rows [B, k]) over the whole index, best first."""
        q = F.normalize(queries.to(self.device), dim=1)
        exclude = exclude.to(self.device)
        batch = torch.arange(len(q), device=self.device)
        buffer = torch.empty(len(q) * min(self.chunk_rows, len(self)), device=self.device)   # reused per chunk
        best_scores, best_rows = [], []
        for start in range(0, len(self), self.chunk_rows):
            scores = _cosines(q, self.vectors[start:start + self.chunk_rows], buffer)      # [B, chunk]
            inside = (exclude >= start) & (exclude < start + scores.shape[1])
            scores[batch[inside], exclude[inside] - start] = -torch.inf
            s, r = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            best_scores.append(s)
            best_rows.append(r + start)
        if not best_scores:
            return torch.zeros(len(q), 0), torch.zeros(len(q), 0, dtype=torch.int64)
        s, pick = torch.topk(torch.cat(best_scores, dim=1), k, dim=1)
        return s, torch.gather(torch.cat(best_rows, dim=1), 1, pick)

    def _hits(self, scores: torch.Tensor, rows: torch.Tensor) -> Hits:
        rows_np = rows.numpy().astype(np.int64)
        return Hits([[self.ids[r] if r >= 0 else "" for r in q] for q in rows_np],
                    [[self.uris[r] if r >= 0 else "" for r in q] for q in rows_np],
                    scores.numpy().astype(np.float32), rows_np)


def _cosines(q: torch.Tensor, chunk: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """Scores [B, c] of unit queries q [B, D] against unit rows chunk [c, D], written into `buffer`.

    A batch of up to SKINNY queries is multiplied as chunk @ qᵀ and returned transposed: for few queries
    that orientation runs about twice as fast on the CPU (MKL, 16 queries); for more, q @ chunkᵀ is as
    fast or faster (docs/bench_search.md)."""
    b, c = len(q), len(chunk)
    if b <= SKINNY:
        return torch.mm(chunk, q.T, out=buffer[:b * c].view(c, b)).T
    return torch.mm(q, chunk.T, out=buffer[:b * c].view(b, c))


def _tensor(array: np.ndarray) -> torch.Tensor:
    """numpy → torch sharing memory; a read-only array (a view of an Arrow buffer) is copied, since torch
    warns on those (and the searches only read or copy their inputs anyway)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _normalised(embeddings, device: torch.device) -> torch.Tensor:
    """float [N, D] (numpy or torch) → float32 [N, D] unit rows on `device` (zero rows stay zero)."""
    x = embeddings if isinstance(embeddings, torch.Tensor) else _tensor(np.asarray(embeddings))
    if x.ndim != 2:
        raise ConfigError(f"embeddings must be [N, D], got shape {tuple(x.shape)}")
    return F.normalize(x.to(device=device, dtype=torch.float32), dim=1)


# ====================================================================== classes

def read_class_names(path: str) -> dict[int, str]:
    """csv `class_index,name` (a header row is optional; local path or fsspec URL) → {index: name}.
    Classes the file does not name stay unnamed (HowTo100M's 1059 classes have no published names)."""
    import fsspec

    names = {}
    with fsspec.open(path, "r", newline="") as fh:
        for n, row in enumerate(csv.reader(fh)):
            if not row or (n == 0 and not row[0].strip().lstrip("-").isdigit()):
                continue
            if len(row) < 2 or not row[0].strip().isdigit():
                raise ConfigError(f"{path}, line {n + 1}: expected 'class_index,name', got {row}")
            names[int(row[0])] = ",".join(row[1:]).strip()          # an unquoted comma stays in the name
    return names


def rank_classes(probs: np.ndarray, k: int = 5, class_names: dict[int, str] | None = None) -> list[dict]:
    """probs float [C] → the k most probable classes, best first: [{"class_index", "name", "prob"}]
    (name is None where `class_names` has none)."""
    top = np.argsort(-np.asarray(probs), kind="stable")[:k]
    names = class_names or {}
    return [{"class_index": int(c), "name": names.get(int(c)), "prob": float(probs[c])} for c in top]


def top_classes(out: str, video_id: str, k: int = 5, class_names: dict[int, str] | str | None = None) -> list[dict]:
    """The k most probable classes of a committed video (mean of its clips' softmax, `probs`), see
    rank_classes; `class_names` is a {index: name} dict or a csv path (read_class_names)."""
    if isinstance(class_names, str):
        class_names = read_class_names(class_names)
    return rank_classes(lookup_videos(out, [video_id], ("probs",)).probs[0], k, class_names)
