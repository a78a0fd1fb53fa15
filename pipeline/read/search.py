"""Exact cosine nearest neighbours over video embeddings, on torch (CPU, or CUDA when there is one).

The index L2-normalises its N rows once. A search normalises a batch of queries, multiplies it by the
index `chunk_rows` rows at a time, keeps each chunk's top k (`torch.topk`) and then the top k of those:
exact (the ranking of a full matmul, ties aside) with memory O(query_batch × chunk_rows) whatever N.

    index = VideoIndex.from_output(OUT)
    hits = index.search_ids(["video-a"], k=10)      # the query video itself is left out
    hits.ids[0], hits.scores[0]                      # 10 ids, float32 cosines, best first

Class names: the logits of HowTo100M's 1059 classes have no published names, so classes are indexed by
number; a csv `class_index,name` gives names where one exists (`read_class_names`, `top_classes`).

CLI (wired by pipeline/cli/entry.py): `vidfeat search OUT --video-id ID [--top K] [--classes FILE] [--json]`
or `--query-file FILE` (.npy of [Q, D] embeddings, or a text file of video ids, one per line).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.text import printable
from pipeline.read.features import SOURCES, VideoFeatures, load_videos, lookup_videos

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
        if len(ids) != len(embeddings):
            raise ConfigError(f"{len(ids)} ids for {len(embeddings)} embeddings")
        self.ids, self.uris = list(ids), list(uris) if uris is not None else [""] * len(ids)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.vectors = _normalised(embeddings, self.device)          # float32 [N, D], unit rows
        self.query_batch, self.chunk_rows = query_batch, chunk_rows
        self.row = {vid: i for i, vid in enumerate(self.ids)}
        log.debug("index of %d videos × %d dims on %s", len(self.ids), self.vectors.shape[1], self.device)

    @classmethod
    def from_features(cls, videos: VideoFeatures, **kw) -> "VideoIndex":
        return cls(videos.ids, videos.embedding, videos.uris, **kw)

    @classmethod
    def from_output(cls, out: str, source: str = "parquet", **kw) -> "VideoIndex":
        """The index of every committed video of output directory `out`."""
        return cls.from_features(load_videos(out, source=source), **kw)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

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
        return self.search(self.vectors[torch.from_numpy(rows).to(self.device)], k, exclude=rows)

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
        return Hits([[self.ids[r] for r in q] for q in rows_np], [[self.uris[r] for r in q] for q in rows_np],
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


# ====================================================================== CLI

def add_search_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments of `vidfeat search`."""
    ap.add_argument("out", help="output directory (local path or fsspec URL)")
    query = ap.add_mutually_exclusive_group(required=True)
    query.add_argument("--video-id", action="append", metavar="ID",
                       help="a committed video to find neighbours of (repeatable); it is left out of its own hits")
    query.add_argument("--query-file", metavar="FILE",
                       help=".npy of float [Q, D] query embeddings, or a text file of video ids, one per line")
    ap.add_argument("--top", type=int, default=10, metavar="K", help="neighbours per query (default 10)")
    ap.add_argument("--classes", metavar="FILE",
                    help="csv class_index,name: also print each hit's most probable classes (named where it can)")
    ap.add_argument("--top-classes", type=int, default=3, metavar="N",
                    help="classes per hit with --classes (default 3)")
    ap.add_argument("--source", choices=SOURCES, default="parquet", help="read Parquet or HDF5 parts")
    ap.add_argument("--json", action="store_true", help="print one JSON document")


def cmd_search(args: argparse.Namespace) -> int:
    """`vidfeat search`: print each query's nearest committed videos (id, cosine score, uri)."""
    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    index = VideoIndex.from_output(args.out, source=args.source)
    labels, hits = _run_queries(index, args)
    report = [{"query": q, "hits": _hit_rows(hits, i)} for i, q in enumerate(labels)]
    if args.classes:
        _add_classes(report, args.out, read_class_names(args.classes), args.top_classes)
    print(json.dumps({"out": args.out, "videos": len(index), "queries": report}, indent=2) if args.json
          else _format(report))
    return 0


def _run_queries(index: VideoIndex, args: argparse.Namespace) -> tuple[list[str], Hits]:
    """(a label per query, hits): by video ids (--video-id, or a text query file), or by embeddings."""
    if args.video_id:
        return args.video_id, index.search_ids(args.video_id, args.top)
    if args.query_file.endswith(".npy"):
        vectors = load_query_vectors(args.query_file)
        return [f"#{i}" for i in range(len(vectors))], index.search(vectors, args.top)
    ids = read_query_ids(args.query_file)
    return ids, index.search_ids(ids, args.top)


def load_query_vectors(path: str) -> np.ndarray:
    """A .npy file (local or fsspec URL) of float [Q, D] or [D] → float32 [Q, D]."""
    import fsspec

    with fsspec.open(path, "rb") as fh:
        vectors = np.load(fh, allow_pickle=False)
    if vectors.ndim not in (1, 2) or vectors.dtype.kind not in "fiu":
        raise ConfigError(f"{path}: expected numbers shaped [Q, D] or [D], got {vectors.dtype} {vectors.shape}")
    return np.atleast_2d(vectors).astype(np.float32)


def read_query_ids(path: str) -> list[str]:
    """A text file of video ids, one per line (blank lines skipped) → the ids."""
    import fsspec

    with fsspec.open(path, "r") as fh:
        ids = [line.strip() for line in fh if line.strip()]
    if not ids:
        raise ConfigError(f"{path}: no video ids in the query file")
    return ids


def _hit_rows(hits: Hits, q: int) -> list[dict]:
    return [{"rank": j + 1, "video_id": vid, "score": float(hits.scores[q, j]), "uri": hits.uris[q][j]}
            for j, vid in enumerate(hits.ids[q])]


def _add_classes(report: list[dict], out: str, names: dict[int, str], k: int) -> None:
    ids = list(dict.fromkeys(h["video_id"] for q in report for h in q["hits"]))
    probs = lookup_videos(out, ids, ("probs",)).probs if ids else np.zeros((0, 0), np.float32)
    row = {vid: i for i, vid in enumerate(ids)}
    for q in report:
        for h in q["hits"]:
            h["classes"] = rank_classes(probs[row[h["video_id"]]], k, names)


def _format(report: list[dict]) -> str:
    lines = []
    for q in report:
        lines.append(f"query {q['query']}:")
        for h in q["hits"]:
            lines.append(f"  {h['rank']:3d}  {h['score']:+.4f}  {h['video_id']}  {h['uri']}")
            if "classes" in h:
                lines.append("        classes: " + " | ".join(
                    f"{c['class_index']}{' ' + c['name'] if c['name'] else ''} {c['prob']:.3f}" for c in h["classes"]))
    return "\n".join(printable(line) for line in lines)         # ids, uris and class names are data
