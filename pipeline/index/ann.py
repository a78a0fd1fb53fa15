"""Approximate cosine search with FAISS: an inverted-file index (IVF) over unit vectors, whose candidates
are re-ranked with the exact vectors.

    params = choose_params(n, dim)                      # the measured choice (docs/ARCHITECTURE.md, "Index")
    ann = build_ann(unit_vectors, params)               # float32 [N, D], rows L2-normalised
    scores, rows = search_ann(ann, params, queries, k, exact=ExactVectors(unit_vectors))

The IVF index proposes `params.rerank` candidates per query from its compressed codes (4-bit product
quantisation of each vector's residual from its list's centre, FAISS's fast-scan kernels); `ExactVectors`
scores those candidates with the exact vectors (in memory, or a memory-mapped file: read only to re-rank)
and the top k are kept. Rows that must not be returned (a retired video, the query itself) are masked
among the candidates. A graph over compressed codes (`--factory HNSW32_PQ192`: BENCHMARKS.md, "the batch
frontier") is built and searched the same way, `nprobe` then being its efSearch. FAISS uses as many
OpenMP threads as this process may run on (`set_threads`), or `OMP_NUM_THREADS` when set.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.errors import ConfigError

TRAIN_PER_LIST = 64          # training rows per inverted list (FAISS warns under 39)
TRAIN_CODES = 65536          # training rows of an index without lists (an HNSW graph's PQ: 256 × 256)
ADD_CHUNK = 65536
SCORE_QUERIES = 16           # queries whose candidates are gathered at once to re-rank
EXACT_BELOW = 4096           # fewer vectors than this: a flat index (IVF cannot be trained well)
DENSE_ABOVE = 2_000_000      # more vectors than this: more lists probed (choose_params)
NPROBE_SHARE = 64            # one list in this many probed (choose_params)
RERANK = 50                  # candidates re-ranked with the exact vectors (choose_params)


@dataclass(frozen=True)
class AnnParams:
    """factory: a FAISS `index_factory` string; nprobe: inverted lists visited per query (an HNSW graph's
    efSearch, for an `HNSW...` factory); rerank: candidates per query scored with the exact vectors (at
    least k)."""

    factory: str
    nprobe: int
    rerank: int

    def __post_init__(self) -> None:
        if self.nprobe < 1 or self.rerank < 0:           # FAISS would fail at every search, not here
            raise ConfigError(f"index {self.factory}: nprobe must be at least 1 and rerank at least 0, got "
                              f"nprobe {self.nprobe}, rerank {self.rerank}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AnnParams":
        return cls(str(data["factory"]), int(data["nprobe"]), int(data["rerank"]))


def choose_params(n: int, dim: int) -> AnnParams:
    """The index for `n` vectors of `dim` dimensions, chosen by measurement (BENCHMARKS.md, "Index"):
    about 2·√n inverted lists (a power of two, at least 39 training vectors each), 4-bit product
    quantisation of each vector's residual from its list's centre (FAISS fast-scan, `…x4fsr`) in
    4-dimension sub-vectors (dim/8 bytes a vector), 2-dimension ones below 512 dimensions (dim/4 bytes:
    coarser codes lost the neighbours there); below 256 dimensions 8-bit scalar codes (dim bytes). One
    list in NPROBE_SHARE probed (at least 8: 32 of 2,048 at 1 M × 768, recall@10 0.968), 3/2 as many
    above DENSE_ABOVE vectors (96 of 4,096 at 5 M: 0.964, where 64 gave 0.938), and RERANK candidates
    re-ranked with the exact vectors. Fewer than EXACT_BELOW vectors: a flat (exact) index."""
    if n < EXACT_BELOW:
        return AnnParams("Flat", 1, 0)
    nlist = min(2 ** round(math.log2(2 * math.sqrt(n))), 2 ** int(math.log2(n // 39)))
    sub = 4 if dim >= 512 else 2                                   # fewer dimensions: finer codes
    codes = f"PQ{dim // sub}x4fsr" if dim >= 256 and dim % 8 == 0 else "SQ8"
    probes = nlist // NPROBE_SHARE * (3 if n > DENSE_ABOVE else 2) // 2     # denser: more of the lists
    return AnnParams(f"IVF{nlist},{codes}", min(nlist, max(8, probes)), RERANK)


def set_threads() -> int:
    """Give FAISS (OpenMP) the CPUs this process may run on — its affinity and its cgroup's CPU quota,
    not the host's count — unless OMP_NUM_THREADS says otherwise. Returns the number set."""
    import faiss

    wanted = os.environ.get("OMP_NUM_THREADS", "")
    count = int(wanted) if wanted.isdigit() and int(wanted) > 0 else min(len(os.sched_getaffinity(0)), cpu_quota())
    faiss.omp_set_num_threads(count)
    return count


def cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs the cgroup (v2) allows, rounded up: `cpu.max` holds "<quota> <period>" or "max <period>"."""
    try:
        with open(path) as fh:
            quota, period = fh.read().split()[:2]
        return max(1, math.ceil(int(quota) / int(period))) if quota != "max" else os.cpu_count() or 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def unit(vectors) -> np.ndarray:
    """float [N, D] → float32 [N, D] with unit rows (zero rows stay zero), C-contiguous."""
    x = np.array(vectors, dtype=np.float32, copy=True, ndmin=2)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return np.ascontiguousarray(x)


def build_ann(vectors: np.ndarray, params: AnnParams, seed: int = 0):
    """A FAISS index of `params.factory` over unit float32 [N, D] `vectors` (inner product): trained on a
    seeded sample (`_train_rows`), then every row added in order (row i is id i)."""
    import faiss

    set_threads()
    index = faiss.index_factory(vectors.shape[1], params.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rows = min(len(vectors), _train_rows(index, params, len(vectors)))
        sample = np.random.default_rng(seed).choice(len(vectors), rows, replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
    add_vectors(index, vectors)
    return index


def _train_rows(index, params: AnnParams, n: int) -> int:
    """Rows to train on: TRAIN_PER_LIST per inverted list (an IVF index, which needs one per list at
    least), else TRAIN_CODES (the codes of a graph or a flat index: a PQ's 256 centroids per sub-space)."""
    ivf = _ivf(index)
    if ivf is None:
        return TRAIN_CODES
    if n < ivf.nlist:
        raise ConfigError(f"{params.factory} needs at least {ivf.nlist} vectors to train, got {n}")
    return TRAIN_PER_LIST * ivf.nlist


def add_vectors(index, vectors: np.ndarray) -> None:
    """Append unit float32 [N, D] rows to a trained index (ids continue from `index.ntotal`)."""
    for start in range(0, len(vectors), ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start:start + ADD_CHUNK], dtype=np.float32))


class ExactVectors:
    """The exact unit vectors [N, D] (float32 or float16; an array, a read-only memmap, or chunks of them),
    read only to re-rank: `score(queries, rows)` → float32 cosines [Q, R] (rows -1 score -inf)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.vectors)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), D] of the given rows."""
        return np.asarray(self.vectors[np.asarray(rows, np.int64)], np.float32)

    def score(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Cosines of unit queries float32 [Q, D] with their candidate `rows` int64 [Q, R]. Many queries
        over one float32 array: FAISS's `fvec_inner_products_by_idx` (threaded, no gathered copy); else a
        few queries at a time through numpy, so the gathered vectors stay in cache."""
        if len(queries) >= SCORE_QUERIES and isinstance(self.vectors, np.ndarray) and self.vectors.dtype == np.float32:
            return _faiss_scores(self.vectors, queries, rows)
        scores = np.empty(rows.shape, np.float32)
        for start in range(0, len(rows), SCORE_QUERIES):
            r = rows[start:start + SCORE_QUERIES]
            gathered = self.rows(np.maximum(r, 0).reshape(-1)).reshape(*r.shape, -1)
            q = queries[start:start + SCORE_QUERIES, :, None]
            scores[start:start + SCORE_QUERIES] = np.matmul(gathered, q)[..., 0]
        scores[rows < 0] = -np.inf
        return scores


def _faiss_scores(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    import faiss

    vectors, queries = np.ascontiguousarray(vectors), np.ascontiguousarray(queries, np.float32)
    rows, scores = np.ascontiguousarray(rows, np.int64), np.empty(rows.shape, np.float32)
    faiss.fvec_inner_products_by_idx(faiss.swig_ptr(scores), faiss.swig_ptr(queries), faiss.swig_ptr(vectors),
                                     faiss.swig_ptr(rows), vectors.shape[1], len(queries), rows.shape[1])
    scores[rows < 0] = -np.inf
    return scores


def search_ann(index, params: AnnParams, queries: np.ndarray, k: int, *, exact: ExactVectors,
               hidden: np.ndarray | None = None, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows of each unit query float32 [Q, D]: (cosines float32 [Q, k], rows int64 [Q, k]), best
    first, -1 / -inf where fewer exist. `hidden` bool [N]: rows never returned; `exclude` int64 [Q]: one
    row to leave out per query (-1: none)."""
    wanted = max(k, params.rerank) + (1 if exclude is not None else 0)
    _, rows = index.search(queries, min(wanted, max(index.ntotal, 1)), **search_parameters(index, params))
    rows = _masked(rows, hidden, exclude)
    scores = exact.score(queries, rows)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    scores, rows = np.take_along_axis(scores, top, 1), np.take_along_axis(rows, top, 1)
    rows[~np.isfinite(scores)] = -1
    return scores, rows


def _masked(rows: np.ndarray, hidden: np.ndarray | None, exclude: np.ndarray | None) -> np.ndarray:
    """Candidates with the hidden rows and each query's excluded row replaced by -1."""
    rows = rows.copy()
    if hidden is not None and hidden.any():
        rows[(rows >= 0) & hidden[np.maximum(rows, 0)]] = -1
    if exclude is not None:
        rows[rows == np.asarray(exclude, np.int64)[:, None]] = -1
    return rows


def search_parameters(index, params: AnnParams) -> dict:
    """FAISS's search parameters for `index`: nprobe of an IVF index, efSearch of an HNSW graph."""
    import faiss

    if _ivf(index) is not None:
        return {"params": faiss.SearchParametersIVF(nprobe=params.nprobe)}
    if _graph(index) is not None:               # behind a transform too: FAISS passes the parameters on
        return {"params": faiss.SearchParametersHNSW(efSearch=params.nprobe)}
    return {}


def search_phrase(index, params: AnnParams) -> str:
    """How wide a search of `index` goes, in words: "48 lists probed", or "efSearch 24" for a graph."""
    import faiss

    knob = search_parameters(index, params).get("params")
    return f"efSearch {params.nprobe}" if isinstance(knob, faiss.SearchParametersHNSW) else \
        f"{params.nprobe} lists probed"


def _graph(index):
    """The HNSW graph `index` searches (itself, or the index behind its transforms: `RR768,HNSW32`), or None."""
    import faiss

    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexHNSW) else None


def _ivf(index):
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
