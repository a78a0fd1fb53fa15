"""Readers for downstream code: the committed features of an output directory (local or fsspec URL).

Only parts with a ledger record are read, so a reader never sees a half-written or uncommitted part.
Parquet and HDF5 parts hold the same numbers (`source="parquet" | "hdf5"`), and both readers list
videos in commit order: parts sorted by name, rows in the order they were written.

Local files are memory-mapped where the format allows: Parquet through `pa.memory_map` (compressed pages
are still decoded into memory), HDF5 contiguous datasets as copy-on-write `np.memmap` views (nothing is
read until used; writing to them never touches the file). Remote HDF5 parts are read whole.

    videos = load_videos(OUT)                          # ids, uris, embedding float32 [N, D]
    clips = load_clips(OUT, source="hdf5")             # ids, offset [N+1], embedding float32 [M, D]

Task-recognition training (`TaskDataset`, `collate`, `read_labels`) lives in pipeline/read/task_dataset.py;
listing and opening the committed files (`part_urls`, `read_table`, `h5_parts`, `consistent`) in
pipeline/read/parts.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ConfigError
from pipeline.read.parts import H5Part, consistent, h5_parts, iter_tables, read_table
from pipeline.store.parquet import float_matrix

log = logging.getLogger(__name__)

SOURCES = ("parquet", "hdf5")
VIDEO_FIELDS = ("embedding", "logits", "probs")
CLIP_FIELDS = ("embedding", "logits")
__all__ = ["SOURCES", "VIDEO_FIELDS", "CLIP_FIELDS", "video_embeddings", "VideoFeatures", "ClipFeatures",
           "load_videos", "load_clips", "lookup_videos"]


def video_embeddings(out: str, source: str = "parquet") -> tuple[list[str], np.ndarray]:
    """(video ids, float32 [N, D] embeddings) of every committed video, in commit order."""
    videos = load_videos(out, source=source)
    return videos.ids, videos.embedding


# ====================================================================== video and clip features

class _ByVideo:
    """Features held per video, `ids[i]` naming video i: its length and the video_id → row map."""

    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def row(self) -> dict[str, int]:
        """video_id → video row (for clip features: an index into `offset`)."""
        return {vid: i for i, vid in enumerate(self.ids)}


@dataclass
class VideoFeatures(_ByVideo):
    """Video-level features of N committed videos, in commit order.

    ids, uris: N strings; num_clips int32 [N]; embedding float32 [N, D]; logits and probs float32 [N, C]
    (mean of the clips' logits / softmax probabilities). A field not asked for is None.
    """

    ids: list[str]
    uris: list[str]
    num_clips: np.ndarray
    embedding: np.ndarray | None = None
    logits: np.ndarray | None = None
    probs: np.ndarray | None = None

    def tensor(self, field: str = "embedding") -> "torch.Tensor":
        """A field as a torch tensor sharing memory with the array (no copy)."""
        import torch

        return torch.from_numpy(_field(self, field))


@dataclass
class ClipFeatures(_ByVideo):
    """Clip-level features of N committed videos with M clips in all, grouped by video in commit order:
    the clips of video i are rows `offset[i]:offset[i + 1]`, in clip order.

    ids: N strings; offset int64 [N+1]; clip_index, valid_frames int32 [M]; start_s, end_s float64 [M]
    (seconds); embedding float32 [M, D]; logits float32 [M, C]. A field not asked for is None.
    """

    ids: list[str]
    offset: np.ndarray
    clip_index: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    valid_frames: np.ndarray
    embedding: np.ndarray | None = None
    logits: np.ndarray | None = None

    def of(self, video_id: str, field: str = "embedding") -> np.ndarray:
        """The clips of one video: `field` rows in clip order, e.g. float32 [L, D] (a view, no copy)."""
        if video_id not in self.row:
            raise ConfigError(f"video {video_id!r} is not among the committed videos")
        i = self.row[video_id]
        return _field(self, field)[self.offset[i]:self.offset[i + 1]]

    def sequences(self, field: str = "embedding") -> list["torch.Tensor"]:
        """One tensor per video, [L_i, ...] views of `field` in commit order (for `pad_sequence`)."""
        import torch

        data = torch.from_numpy(_field(self, field))
        return list(torch.split(data, np.diff(self.offset).tolist()))


@consistent
def load_videos(out: str, source: str = "parquet", fields: Sequence[str] = ("embedding",)) -> VideoFeatures:
    """Video-level features of every committed video; `fields` ⊆ VIDEO_FIELDS (ids, uris and num_clips
    always come). Loading only what is needed matters: logits and probs of 1M videos × 1059 classes are
    4 GiB each."""
    fields = _check(source, fields, VIDEO_FIELDS)
    if source == "parquet":
        t = read_table(out, "videos", ["video_id", "uri", "num_clips", *fields])
        return VideoFeatures(_strings(t, "video_id"), _strings(t, "uri"), _ints(t, "num_clips"),
                             **{f: float_matrix(t.column(f)) for f in fields})
    parts = h5_parts(out)
    return VideoFeatures([i for p in parts for i in p.ids], [u for p in parts for u in p.uris],
                         _concat([p.array("num_clips") for p in parts], np.int32, 1),
                         **{f: _concat([p.array(f) for p in parts]) for f in fields})


@consistent
def load_clips(out: str, source: str = "parquet", fields: Sequence[str] = ("embedding",)) -> ClipFeatures:
    """Clip-level features of every committed video, grouped by video (see ClipFeatures);
    `fields` ⊆ CLIP_FIELDS."""
    fields = _check(source, fields, CLIP_FIELDS)
    return _parquet_clips(out, fields) if source == "parquet" else _h5_clips(h5_parts(out), fields)


@consistent
def lookup_videos(out: str, video_ids: Sequence[str], fields: Sequence[str] = ("probs",)) -> VideoFeatures:
    """The video rows of `video_ids`, in that order, reading one Parquet part at a time so that memory
    holds only the rows asked for. An id that is not committed raises ConfigError naming it."""
    fields = _check("parquet", fields, VIDEO_FIELDS)
    wanted = pa.array(list(dict.fromkeys(video_ids)), pa.string())
    found = [t.filter(pc.is_in(t.column("video_id"), value_set=wanted))
             for t in iter_tables(out, "videos", ["video_id", "uri", "num_clips", *fields])]
    found = [t for t in found if t.num_rows]
    table = pa.concat_tables(found) if found else pa.table({"video_id": pa.array([], pa.string())})
    position = {vid: i for i, vid in enumerate(table.column("video_id").to_pylist())}
    missing = [v for v in video_ids if v not in position]
    if missing:
        raise ConfigError(f"unknown video id(s) {missing[:10]}: not among the committed videos of {out}")
    table = table.take(pa.array([position[v] for v in video_ids], pa.int64()))
    return VideoFeatures(_strings(table, "video_id"), _strings(table, "uri"), _ints(table, "num_clips"),
                         **{f: float_matrix(table.column(f)) for f in fields})


def _parquet_clips(out: str, fields: tuple[str, ...]) -> ClipFeatures:
    videos = read_table(out, "videos", ["video_id"]).column("video_id").combine_chunks()
    if not len(videos):
        return _h5_clips([], fields)                      # nothing committed: the empty ClipFeatures
    clips = read_table(out, "clips", ["video_id", "clip_index", "start_s", "end_s", "valid_frames", *fields])
    owner = pc.index_in(clips.column("video_id"), value_set=videos.cast(pa.string()))
    if owner.null_count:
        raise ConfigError(f"{out}: {owner.null_count} committed clip row(s) belong to no committed video")
    owner = owner.to_numpy(zero_copy_only=False).astype(np.int64)
    clip_index = _ints(clips, "clip_index")
    order = np.lexsort((clip_index, owner))           # already grouped as written; this makes sure
    counts = np.bincount(owner, minlength=len(videos))
    columns = {"clip_index": clip_index, "start_s": _floats(clips, "start_s"), "end_s": _floats(clips, "end_s"),
               "valid_frames": _ints(clips, "valid_frames"), **{f: float_matrix(clips.column(f)) for f in fields}}
    if not np.array_equal(order, np.arange(len(order))):
        columns = {k: v[order] for k, v in columns.items()}
    return ClipFeatures(videos.to_pylist(), np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), **columns)


def _h5_clips(parts: list["H5Part"], fields: tuple[str, ...]) -> ClipFeatures:
    starts = np.cumsum([0] + [p.offset[-1] for p in parts])
    offset = np.concatenate([[0]] + [p.offset[1:] + s for p, s in zip(parts, starts)]).astype(np.int64)
    scalars = {"clip_index": np.int32, "start_s": np.float64, "end_s": np.float64, "valid_frames": np.int32}
    return ClipFeatures([i for p in parts for i in p.ids], offset,
                        **{k: _concat([p.array(f"clips/{k}") for p in parts], dt, 1) for k, dt in scalars.items()},
                        **{f: _concat([p.array(f"clips/{f}") for p in parts]) for f in fields})


# ====================================================================== helpers

def _check(source: str, fields: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; use one of {SOURCES}")
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown}; known: {list(known)}")
    return tuple(fields)


def _field(features, name: str) -> np.ndarray:
    value = getattr(features, name, None)
    if not isinstance(value, np.ndarray):
        raise ConfigError(f"field {name!r} was not loaded: ask for it with fields=(..., {name!r})")
    return value


def _strings(table: pa.Table, name: str) -> list[str]:
    return table.column(name).to_pylist()


def _ints(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.int32, copy=False) if table.num_rows else np.zeros(0, np.int32)


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.float64, copy=False) if table.num_rows else np.zeros(0)


def _concat(arrays: list[np.ndarray], dtype=np.float32, ndim: int = 2) -> np.ndarray:
    """Parts' arrays → one array; a single part comes back as is (a memory map stays a memory map)."""
    if len(arrays) == 1:
        return arrays[0]
    if not arrays:
        return np.zeros((0,) * ndim, dtype)
    return np.concatenate(arrays)
