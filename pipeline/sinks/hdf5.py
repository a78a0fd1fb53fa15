"""HDF5 parts laid out for training: contiguous [N, D] arrays, an id index and clip offsets.

Layout (schema version 1) is documented in schemas/README.md.
"""
from __future__ import annotations

import json

import h5py
import numpy as np

import schemas


def write_part(videos: list[dict], clips_by_video: dict[str, list[dict]], dim: int, num_classes: int,
               provenance: dict, path: str) -> None:
    """videos: video rows; clips_by_video: video_id → its clip rows in clip order; → local `path`."""
    clips = [c for v in videos for c in clips_by_video[v["video_id"]]]
    counts = np.array([len(clips_by_video[v["video_id"]]) for v in videos], np.int64)
    text = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.attrs["schema_version"] = schemas.SCHEMA_VERSION
        f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        f.create_dataset("video_id", data=[v["video_id"] for v in videos], dtype=text)
        f.create_dataset("uri", data=[v["uri"] for v in videos], dtype=text)
        f.create_dataset("num_clips", data=counts.astype(np.int32))
        f.create_dataset("clip_offset", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        f.create_dataset("embedding", data=_matrix(videos, "embedding", dim))
        f.create_dataset("logits", data=_matrix(videos, "logits", num_classes))
        f.create_dataset("probs", data=_matrix(videos, "probs", num_classes))
        g = f.create_group("clips")
        g.create_dataset("clip_index", data=np.array([c["clip_index"] for c in clips], np.int32))
        g.create_dataset("start_s", data=np.array([c["start_s"] for c in clips], np.float64))
        g.create_dataset("end_s", data=np.array([c["end_s"] for c in clips], np.float64))
        g.create_dataset("valid_frames", data=np.array([c["valid_frames"] for c in clips], np.int32))
        g.create_dataset("embedding", data=_matrix(clips, "embedding", dim))
        g.create_dataset("logits", data=_matrix(clips, "logits", num_classes))


def _matrix(rows: list[dict], key: str, width: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, width), np.float32)
    return np.stack([np.asarray(r[key], np.float32) for r in rows])
