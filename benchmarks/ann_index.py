"""The approximate index (pipeline/index/ann.py) against exact search, measured in the same run.

    python benchmarks/ann_index.py --n 1000000                         # video level: 1 M × 768 float32
    python benchmarks/ann_index.py --n 5000000 --dtype float16 --exact-batch-only   # clip level

Embeddings: `pipeline.index.synthetic.clustered` (its module doc states the distribution: a shared mean,
2,000 Zipf-sized topics, groups of ~32 videos, a power-law spectrum under a random rotation, 2 % planted
near-duplicates), written as unit rows to a memory-mapped .npy in --workdir (float16 with --dtype
float16: the exact vectors on disk, read only to re-rank). Queries: --queries more rows of the same
distribution, not in the index.

Exact: `VideoIndex` (torch, rows in memory) when the rows fit (float32), else the same chunked matmul
streamed from the memory-mapped file (`exact_scan`); its top 10 is the truth recall is measured
against. Approximate, per --config FACTORY:NPROBE:RERANK (default: `choose_params`): build time (train +
add), index bytes (FAISS's serialised size: what a process holds; the exact vectors stay on disk),
recall@10, single queries/s (one query per call, the re-ranking included), batch queries/s (--batch
queries per call), and a nightly extension (--extend new rows added to the trained index and the
index file written again, as `refresh_index` does).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time

import numpy as np

from pipeline.index.ann import AnnParams, ExactVectors, add_vectors, build_ann, choose_params, search_ann, set_threads
from pipeline.index.synthetic import CHUNK, clustered


def make_vectors(n: int, dim: int, dtype: str, path: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows float [n, dim] in a memory-mapped .npy at `path`, and the rows' near-duplicate sources."""
    vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=(n, dim))
    made = clustered(n, dim, seed=seed, out=vectors)
    for start in range(0, n, CHUNK):
        block = np.asarray(vectors[start:start + CHUNK], np.float32)
        vectors[start:start + CHUNK] = block / np.linalg.norm(block, axis=1, keepdims=True)
    vectors.flush()
    return vectors, made.dup_of


def exact_scan(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 262144) -> np.ndarray:
    """Exact top-k rows int64 [Q, k] of unit queries over unit rows, streamed chunk by chunk (torch matmul)."""
    import torch

    best_s, best_r = torch.full((len(queries), 0), -2.0), torch.zeros((len(queries), 0), dtype=torch.int64)
    q = torch.from_numpy(queries)
    for start in range(0, len(vectors), chunk):
        block = torch.from_numpy(np.asarray(vectors[start:start + chunk], np.float32))
        s, r = torch.topk(q @ block.T, min(k, len(block)), dim=1)
        best_s, pick = torch.topk(torch.cat([best_s, s], 1), k, dim=1)
        best_r = torch.gather(torch.cat([best_r, r + start], 1), 1, pick)
    return best_r.numpy()


def exact_side(vectors: np.ndarray, queries: np.ndarray, args) -> tuple[np.ndarray, dict]:
    """The truth (top k of every query) and exact search's queries/s, single and batch."""
    if vectors.dtype == np.float32 and not args.exact_batch_only:
        from pipeline.read.search import VideoIndex

        index = VideoIndex([str(i) for i in range(len(vectors))], vectors, device="cpu")
        search = lambda q: index.search(q, args.k).indices                    # noqa: E731
    else:
        search = lambda q: exact_scan(vectors, q, args.k)                     # noqa: E731
    start = time.perf_counter()
    truth = search(queries)
    batch = len(queries) / (time.perf_counter() - start)
    single = None
    if not args.exact_batch_only:
        start = time.perf_counter()
        for i in range(args.exact_single):
            search(queries[i:i + 1])
        single = args.exact_single / (time.perf_counter() - start)
    return truth, {"batch_qps": round(batch, 2), "single_qps": round(single, 2) if single else None,
                   "how": "VideoIndex (torch, in memory)" if vectors.dtype == np.float32 and not args.exact_batch_only
                   else "chunked matmul streamed from the memmap"}


def approximate_side(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, configs: list[AnnParams],
                     args) -> dict:
    """One index of the configs' factory, built once; each config's search settings measured on it."""
    start = time.perf_counter()
    index = build_ann(vectors, configs[0])
    build_s = time.perf_counter() - start
    exact = ExactVectors(vectors)
    size = _bytes(index)
    report = {"factory": configs[0].factory, "build_s": round(build_s, 1), "index_bytes": size,
              "bytes_per_vector": round(size / len(vectors), 1), "searches": []}
    for params in configs:
        report["searches"].append(_searches(index, params, exact, queries, truth, args))
        print(json.dumps(report["searches"][-1]), flush=True)
    report["extend_s"] = _extend(index, vectors, args.extend)
    return report


def _searches(index, params: AnnParams, exact: ExactVectors, queries: np.ndarray, truth: np.ndarray, args) -> dict:
    _, rows = search_ann(index, params, queries, args.k, exact=exact)
    report = {"nprobe": params.nprobe, "rerank": params.rerank,
              "recall_at_10": round(float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(rows, truth)])), 4)}
    start = time.perf_counter()
    for i in range(args.single):
        search_ann(index, params, queries[i:i + 1], args.k, exact=exact)
    report["single_qps"] = round(args.single / (time.perf_counter() - start), 1)
    start = time.perf_counter()
    for b in range(0, len(queries), args.batch):
        search_ann(index, params, queries[b:b + args.batch], args.k, exact=exact)
    report["batch_qps"] = round(len(queries) / (time.perf_counter() - start), 1)
    return report


def _bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def _extend(index, vectors: np.ndarray, count: int) -> float:
    """Seconds to add `count` rows (the first ones again: the cost is the same) and write the index."""
    import faiss

    start = time.perf_counter()
    add_vectors(index, np.asarray(vectors[:count], np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index, os.path.join(tmp, "g.faiss"))
        np.save(os.path.join(tmp, "g.vectors.npy"), np.asarray(vectors[:count]))
    return round(time.perf_counter() - start, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=500, help="queries timed one per call (approximate)")
    ap.add_argument("--exact-single", type=int, default=10, help="queries timed one per call (exact)")
    ap.add_argument("--exact-batch-only", action="store_true", help="no single-query timing of exact search")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--extend", type=int, default=10_000)
    ap.add_argument("--config", action="append",
                    help="FACTORY:NPROBE:RERANK (repeatable; one build per factory)")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    threads = set_threads()
    path = os.path.join(args.workdir, f"ann-bench-{args.n}x{args.dim}-{args.dtype}.npy")
    start = time.perf_counter()
    vectors, _ = make_vectors(args.n + args.queries, args.dim, args.dtype, path, args.seed)
    made_s = time.perf_counter() - start
    base, queries = vectors[:args.n], np.asarray(vectors[args.n:], np.float32)
    truth, exact = exact_side(base, queries, args)
    configs = [AnnParams(f, int(p), int(r)) for f, p, r in (c.rsplit(":", 2) for c in args.config or [])] or [
        choose_params(args.n, args.dim)]
    report = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
              f"{threads} FAISS threads", "n": args.n, "dim": args.dim, "dtype": args.dtype, "k": args.k,
              "queries": args.queries, "generate_s": round(made_s, 1), "exact": exact, "approximate": []}
    for factory in dict.fromkeys(p.factory for p in configs):
        report["approximate"].append(approximate_side(base, queries, truth,
                                                      [p for p in configs if p.factory == factory], args))
    print(json.dumps(report, indent=2))
    os.remove(path)


if __name__ == "__main__":
    main()
