"""Queries/s of `pipeline.read.search.VideoIndex` vs a plain numpy baseline, same index, same queries, one run.

    python benchmarks/search.py                         # 1M × 768 float32; 1, 16 and 512 queries; k = 10
    python benchmarks/search.py --n 200000 --queries 256

Both sides start from the same random float32 embeddings (seeded) with rows normalised once, outside
the timing. Timed: normalise the queries, score them against every row, take the top k sorted by score.
numpy: `q @ index.T` then `argpartition` + a sort of the k, in query batches (`--numpy-batch`) so that
the [batch, N] score matrix and argpartition's int64 indices fit in memory. Ours: `VideoIndex.search`
(torch matmul over row chunks, `topk` per chunk, then the top k of those). Runs alternate (ours, numpy,
ours, ...) so that load on a shared machine hits both alike; each side reports its best and median of
`--repeats`, for each number of queries in `--queries` (one index for all). The two must return the
same ids (apart from exact ties); the overlap is printed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from pipeline.read.search import VideoIndex
from timing import interleaved_times


def numpy_search(index: np.ndarray, queries: np.ndarray, k: int, batch: int) -> np.ndarray:
    """Baseline: unit-row index float32 [N, D], queries [Q, D] → int64 [Q, k] rows, best first."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    out = []
    for start in range(0, len(q), batch):
        scores = q[start:start + batch] @ index.T                               # [b, N]
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="videos in the index")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, nargs="+", default=[1, 16, 512], help="query counts to time")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--numpy-batch", type=int, default=256, help="queries per numpy matmul")
    ap.add_argument("--chunk-rows", type=int, default=65536, help="index rows per torch matmul (ours)")
    ap.add_argument("--query-batch", type=int, default=1024, help="queries per torch matmul (ours)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    start = time.perf_counter()
    index = VideoIndex([str(i) for i in range(args.n)], embeddings, device="cpu",
                       chunk_rows=args.chunk_rows, query_batch=args.query_batch)
    build_s = time.perf_counter() - start
    baseline = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    del embeddings
    report = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads", "torch": torch.__version__, "numpy": np.__version__,
        "n": args.n, "dim": args.dim, "k": args.k, "index_build_s": round(build_s, 2),
        "runs": [compare(index, baseline, rng.standard_normal((q, args.dim), dtype=np.float32), args)
                 for q in args.queries],
    }
    print(json.dumps(report, indent=2))


def compare(index: VideoIndex, baseline: np.ndarray, queries: np.ndarray, args) -> dict:
    """Time both searches on the same queries, alternating; queries/s (best, median) and their ratio."""
    walls, results = interleaved_times({"ours": lambda: index.search(queries, args.k).indices,
                                        "numpy": lambda: numpy_search(baseline, queries, args.k, args.numpy_batch)},
                                       args.repeats, warmup=0)
    overlap = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(results["ours"], results["numpy"])])
    best = {name: len(queries) / min(w) for name, w in walls.items()}
    return {
        "queries": len(queries), "walls_s": {k: [round(x, 3) for x in v] for k, v in walls.items()},
        "queries_per_s_best": {k: round(v, 2) for k, v in best.items()},
        "queries_per_s_median": {k: round(len(queries) / statistics.median(w), 2) for k, w in walls.items()},
        "ratio_ours_over_numpy_best": round(best["ours"] / best["numpy"], 3), "id_overlap": float(overlap),
    }


if __name__ == "__main__":
    main()
