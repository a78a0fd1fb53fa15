"""Embeddings with the structure of real ones, for tests and benchmarks (real video embeddings are not
isotropic noise: they share a mean direction, gather in topics of very unequal sizes, spread unequally
along their dimensions, and a corpus holds near-copies of the same video).

    x = mean + centre[topic(g)] + sub[g] + (scale ⊙ z) @ rotation        g: the video's group

- `mean`: one shared direction, norm `mean_norm` (every cosine between two videos is positive, as with
  TimeSformer's LayerNormed CLS);
- `centre[topic]`: `topics` centres drawn with the same anisotropic spectrum, norm ~1; topic sizes are
  Zipf-distributed (exponent 1.1): a few huge topics, a long tail;
- `sub[g]`: videos come in groups of `group_size` on average (one channel, one recipe, one game), each
  group in one topic (Zipf, so big topics hold many groups) around its own centre of norm `sub_spread`:
  neighbourhoods inside a topic, as real ones have, of the same size whatever n (without them the 10th
  and the 11th neighbour of a video differ by 0.001 in cosine, and recall@10 measures noise);
- around its sub-centre: independent normals scaled by a power-law spectrum (scale_i ∝ (i+1)^-`decay`,
  so a few directions carry most of the variance), turned by one random rotation (no axis is special,
  which matters to product quantisation), norm `spread`;
- near-duplicates: a fraction `dup_fraction` of the rows are another row plus noise of norm
  `dup_noise` relative to it (a re-encode, a resize), their source recorded in `dup_of` (-1: none).
Rows come in a random order; everything is seeded. float32 [n, dim].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK = 65536


@dataclass
class Synthetic:
    vectors: np.ndarray          # float32 [n, dim]
    topic: np.ndarray            # int64 [n]
    dup_of: np.ndarray           # int64 [n]: the row a near-duplicate copies, -1 for an original


def spectrum(dim: int, decay: float) -> np.ndarray:
    """Power-law scales float32 [dim], unit root-mean-square."""
    s = (np.arange(dim) + 1.0) ** -decay
    return (s / np.sqrt((s ** 2).mean())).astype(np.float32)


def clustered(n: int, dim: int = 768, *, topics: int = 2000, group_size: int = 32, decay: float = 0.7,
              sub_spread: float = 0.5, spread: float = 0.25, mean_norm: float = 1.5, dup_fraction: float = 0.02,
              dup_noise: float = 0.05,
              seed: int = 0, out: np.ndarray | None = None) -> Synthetic:
    """`n` embeddings as the module doc says; `out` (float32 [n, dim], e.g. a memmap) receives them."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    scale = spectrum(dim, decay) / np.sqrt(dim)
    mean = rng.standard_normal(dim).astype(np.float32)
    mean *= mean_norm / np.linalg.norm(mean)
    centres = (rng.standard_normal((topics, dim)).astype(np.float32) * scale) @ rotation
    weights = (np.arange(topics) + 1.0) ** -1.1
    groups = max(1, n // group_size)
    group_topic = rng.choice(topics, size=groups, p=weights / weights.sum())
    subs = rng.standard_normal((groups, dim), dtype=np.float32)
    subs *= sub_spread / np.sqrt(dim)
    group = rng.integers(0, groups, n)
    topic = group_topic[group]
    vectors = np.empty((n, dim), np.float32) if out is None else out
    for start in range(0, n, CHUNK):
        g = group[start:start + CHUNK]
        z = rng.standard_normal((len(g), dim), dtype=np.float32) * (scale * spread)
        vectors[start:start + CHUNK] = mean + centres[topic[start:start + CHUNK]] + subs[g] + z @ rotation
    dup_of = _plant_duplicates(vectors, rng, dup_fraction, dup_noise)
    return Synthetic(vectors, topic, dup_of)


def _plant_duplicates(vectors: np.ndarray, rng: np.random.Generator, fraction: float, noise: float) -> np.ndarray:
    """Overwrite a `fraction` of the rows with noisy copies of other (original) rows; returns dup_of."""
    n, dim = vectors.shape
    dup_of = np.full(n, -1, np.int64)
    count = int(n * fraction)
    if count == 0:
        return dup_of
    picked = rng.choice(n, size=2 * count, replace=False)
    copies, sources = picked[:count], picked[count:]
    for start in range(0, count, CHUNK):
        c, s = copies[start:start + CHUNK], sources[start:start + CHUNK]
        src = vectors[s]
        jitter = rng.standard_normal(src.shape, dtype=np.float32)
        jitter *= (noise * np.linalg.norm(src, axis=1, keepdims=True) / np.sqrt(dim))
        vectors[c] = src + jitter
        dup_of[c] = s
    return dup_of
