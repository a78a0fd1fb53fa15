"""Output schemas, versioned. Version 1: see schemas/README.md for the documented layout.

Arrow schemas are functions of the embedding size D and the number of classes C, because embeddings
and logits are fixed-size float32 lists.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

PROVENANCE = [
    pa.field("checkpoint_sha256", pa.string()),
    pa.field("preset", pa.string()),
    pa.field("sampling", pa.string()),          # e.g. "96x32@30fps"
    pa.field("preprocessing", pa.string()),     # e.g. "short224/center1/mean0.45,0.45,0.45/std0.225,..."
    pa.field("decode", pa.string()),            # e.g. "pyav/fast/snap2"
    pa.field("fingerprint", pa.string()),
    pa.field("schema_version", pa.int32()),
    pa.field("code_version", pa.string()),
    pa.field("run_id", pa.string()),
]


def video_schema(dim: int, num_classes: int) -> pa.Schema:
    """videos/ parts: one row per video."""
    return pa.schema([
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("num_clips", pa.int32(), nullable=False),
        pa.field("duration_s", pa.float64()),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("logits", pa.list_(pa.float32(), num_classes), nullable=False),
        pa.field("probs", pa.list_(pa.float32(), num_classes), nullable=False),
        *PROVENANCE,
    ], metadata={"schema_version": str(SCHEMA_VERSION)})


def clip_schema(dim: int, num_classes: int) -> pa.Schema:
    """clips/ parts: one row per clip."""
    return pa.schema([
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("clip_index", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("valid_frames", pa.int32(), nullable=False),
        pa.field("frame_indices", pa.list_(pa.int64())),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("logits", pa.list_(pa.float32(), num_classes), nullable=False),
    ], metadata={"schema_version": str(SCHEMA_VERSION)})


FAILURE_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),     # decode | infer | aggregate
    pa.field("error", pa.string(), nullable=False),     # "<kind>: <reason>", naming the video
    pa.field("run_id", pa.string()),
], metadata={"schema_version": str(SCHEMA_VERSION)})

# HDF5 part layout (version 1); every dataset name below exists in every part.
HDF5_VIDEO_DATASETS = ("video_id", "uri", "num_clips", "clip_offset", "embedding", "logits", "probs")
HDF5_CLIP_DATASETS = ("clips/clip_index", "clips/start_s", "clips/end_s", "clips/valid_frames",
                      "clips/embedding", "clips/logits")
