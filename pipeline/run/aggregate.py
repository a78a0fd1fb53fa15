"""Clip results → one video row (pure).

The video embedding is the mean of its clips' CLS embeddings; `logits` the mean of the clips' logits
(what the official test code accumulates) and `probs` the mean of the clips' softmax probabilities
(what the paper averages, §4.6). Every clip counts once, whatever its number of valid frames.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float [N, C] in float64 for stability, returned as float32."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def aggregate_video(clips: Sequence[dict]) -> dict:
    """clips: rows with `clip_index`, `embedding` [D], `logits` [C], `end_s` → the video-level numbers.

    Returns num_clips, embedding [D], logits [C], probs [C] (float32) and duration_s (last clip's end).
    Raises ValueError when the clip indices are not exactly 0..n-1.
    """
    ordered = sorted(clips, key=lambda c: int(c["clip_index"]))
    indices = [int(c["clip_index"]) for c in ordered]
    if indices != list(range(len(ordered))):
        raise ValueError(f"clip indices are not 0..{len(ordered) - 1}: {indices}")
    emb = np.stack([np.asarray(c["embedding"], np.float32) for c in ordered])
    logits = np.stack([np.asarray(c["logits"], np.float32) for c in ordered])
    probs = softmax(logits) if logits.shape[1] else logits
    return {
        "num_clips": len(ordered),
        "embedding": emb.mean(axis=0, dtype=np.float64).astype(np.float32),
        "logits": logits.mean(axis=0, dtype=np.float64).astype(np.float32),
        "probs": probs.mean(axis=0, dtype=np.float64).astype(np.float32),
        "duration_s": float(ordered[-1]["end_s"]),
    }
