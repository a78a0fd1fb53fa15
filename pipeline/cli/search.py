"""`vidfeat search`: the command's arguments and what it prints (class names of the hits: search.py).

`vidfeat search OUT --video-id ID [--top K] [--classes FILE] [--json] [--exact]` or `--query-file FILE`
(.npy of [Q, D] embeddings, or a text file of video ids, one per line). The search uses the output's
index when it covers the output (pipeline/index), else searches exactly; a line on stderr (and `how` in
the JSON) says which and why.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import ConfigError
from pipeline.read.features import SOURCES, lookup_videos
from pipeline.text import printable

if TYPE_CHECKING:                  # torch loads with pipeline.read.search: only a search needs it
    from pipeline.read.search import Hits, VideoIndex


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
    ap.add_argument("--exact", action="store_true", help="search exactly even where an index covers the output")
    ap.add_argument("--clips", action="store_true",
                    help="find moments (video, clip, start-end s) among the clip embeddings, not videos")
    ap.add_argument("--json", action="store_true", help="print one JSON document")


def cmd_search(args: argparse.Namespace) -> int:
    """`vidfeat search`: print each query's nearest committed videos (id, cosine score, uri)."""
    from pipeline.read.search import VideoIndex, read_class_names

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    if args.clips:
        return _search_moments(args)
    index = VideoIndex.from_output(args.out, source=args.source, exact=args.exact)
    print(f"search: {printable(index.how)}", file=sys.stderr)
    labels, hits = _run_queries(index, args)
    report = [{"query": q, "hits": _hit_rows(hits, i)} for i, q in enumerate(labels)]
    if args.classes:
        _add_classes(report, args.out, read_class_names(args.classes), args.top_classes)
    print(json.dumps({"out": args.out, "videos": len(index.row), "how": index.how, "queries": report}, indent=2)
          if args.json else _format(report))
    return 0


def _search_moments(args: argparse.Namespace) -> int:
    """`vidfeat search --clips`: each query's nearest moments; a video id queries with its video embedding."""
    from pipeline.read.moments import MomentIndex

    moments = MomentIndex.from_output(args.out, exact=args.exact)
    print(f"search: {printable(moments.how)}", file=sys.stderr)
    if args.video_id or not args.query_file.endswith(".npy"):
        labels = args.video_id or read_query_ids(args.query_file)
        vectors = lookup_videos(args.out, labels, ("embedding",)).embedding
    else:
        vectors = load_query_vectors(args.query_file)
        labels = [f"#{i}" for i in range(len(vectors))]
    report = [{"query": q, "moments": hits} for q, hits in zip(labels, moments.search(vectors, args.top))]
    print(json.dumps({"out": args.out, "how": moments.how, "queries": report}, indent=2) if args.json else "\n".join(
        printable(f"query {q['query']}:\n" + "\n".join(
            f"  {m['score']:+.4f}  {m['video_id']}  clip {m['clip_index']}  {m['start_s']:.1f}-{m['end_s']:.1f} s"
            for m in q["moments"])) for q in report))
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
    from pipeline.read.search import rank_classes

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
