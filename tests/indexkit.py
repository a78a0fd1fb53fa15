"""Outputs of synthetic embeddings for the index tests: parts committed like a run commits them (data files,
then the ledger record), thousands of videos in a second, no video decoded.

A video's embedding is a row of `pipeline.index.synthetic.clustered`; its clips (two a video) are that
embedding plus a little noise, at 0-10 s and 10-20 s.
"""
from __future__ import annotations

import numpy as np

from pipeline.store.commit import write_part
from pipeline.store.ledger import Ledger

DIM = 32
PROVENANCE = {"checkpoint_sha256": "sha", "preset": "tiny", "sampling": "8x4@30fps", "preprocessing": "p",
              "decode": "pyav/fast", "fingerprint": "fp-index", "schema_version": 1, "code_version": "0",
              "run_id": "indexkit"}


def video_rows(ids: list[str], vectors: np.ndarray, uri: str = "/videos/{}.mp4", seed: int = 0):
    """(video rows, {id: clip rows}) of `ids` with embeddings `vectors` float [N, DIM]."""
    rng = np.random.default_rng(seed)
    videos, clips = [], {}
    for vid, vec in zip(ids, vectors):
        parts = [vec + rng.normal(0, 0.02, vec.shape).astype(np.float32) for _ in range(2)]
        clips[vid] = [{"video_id": vid, "clip_index": j, "start_s": 10.0 * j, "end_s": 10.0 * (j + 1),
                       "valid_frames": 8, "frame_indices": list(range(8)), "embedding": c,
                       "logits": np.zeros(2, np.float32)} for j, c in enumerate(parts)]
        videos.append({"video_id": vid, "uri": uri.format(vid), "num_clips": 2, "duration_s": 20.0,
                       "embedding": np.asarray(vec, np.float32), "logits": np.zeros(2, np.float32),
                       "probs": np.full(2, 0.5, np.float32), **PROVENANCE})
    return videos, clips


def commit(out: str, part: str, ids: list[str], vectors: np.ndarray, uri: str = "/videos/{}.mp4") -> None:
    """Commit one part holding `ids` (files, then the record) as a writer that claimed the output."""
    ledger = Ledger(out)
    ledger.claim()
    videos, clips = video_rows(ids, vectors, uri)
    write_part(ledger, part, videos, clips, [], PROVENANCE)
    ledger.record(part, ids, [], uris=[v["uri"] for v in videos])


def commit_parts(out: str, vectors: np.ndarray, per_part: int, first: int = 0, prefix: str = "v") -> list[str]:
    """Commit `vectors` as videos `<prefix><first + i>` in parts of `per_part`; returns the ids."""
    ids = [f"{prefix}{first + i:06d}" for i in range(len(vectors))]
    for start in range(0, len(ids), per_part):
        commit(out, f"part-{prefix}{first + start:06d}", ids[start:start + per_part], vectors[start:start + per_part])
    return ids
