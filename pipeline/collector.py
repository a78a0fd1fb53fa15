"""The driver's side of the results: clip rows in, whole videos (or failures) out.

Rows reach the driver in no particular order across videos (inference batches clips of several
videos). `VideoCollector.add(row)` keeps a video's clips until clips 0..last are all in, then returns
the video event; a failure row ends its video at once (its other clips, earlier or later, are dropped).
A row of a video that is already finished is ignored, so a task Ray re-ran after a lost node cannot
add a video twice. Memory holds the clips of unfinished videos and the ids of finished ones.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.aggregate import aggregate_video

INCOMPLETE = "incomplete: the pipeline returned no final clip for this video"


class VideoCollector:
    """Assembles clip rows into videos. `add(row)` returns the events it completes:
    {"video": row, "clips": [...]} when a video's clips 0..last are all in, {"failure": {...}} when a
    video failed."""

    def __init__(self):
        self.clips: dict[str, dict[int, dict]] = {}
        self.uris: dict[str, str] = {}
        self.last: dict[str, int] = {}
        self.finished: set[str] = set()

    def add(self, row: dict) -> list[dict]:
        vid = str(row["video_id"])
        if vid in self.finished:
            return []
        if row["error"]:
            self._forget(vid)
            return [failure(vid, str(row["uri"]), str(row["stage"]), str(row["error"]))]
        clip = clip_record(vid, row)
        self.clips.setdefault(vid, {})[clip["clip_index"]] = clip
        self.uris[vid] = str(row["uri"])
        if bool(row["last"]):
            self.last[vid] = clip["clip_index"]
        if vid in self.last and len(self.clips[vid]) == self.last[vid] + 1:
            return [self._finish(vid)]
        return []

    def _finish(self, vid: str) -> dict:
        uri = self.uris[vid]
        clips = [c for _, c in sorted(self.clips[vid].items())]
        self._forget(vid)
        try:
            video = {"video_id": vid, "uri": uri, **aggregate_video(clips)}
        except ValueError as exc:
            return failure(vid, uri, "aggregate", str(exc))
        return {"video": video, "clips": clips}

    def _forget(self, vid: str) -> None:
        self.finished.add(vid)
        for held in (self.clips, self.uris, self.last):
            held.pop(vid, None)

    def unfinished(self, todo: pa.Table) -> list[dict]:
        """Failure events for the videos of `todo` (video_id, uri) that never finished."""
        done = pa.array(list(self.finished), pa.string())
        left = todo.filter(pc.invert(pc.is_in(todo.column("video_id"), value_set=done)))
        return [failure(v, u, "decode", INCOMPLETE) for v, u in
                zip(left.column("video_id").to_pylist(), left.column("uri").to_pylist())]


def failure(vid: str, uri: str, stage: str, error: str) -> dict:
    return {"failure": {"video_id": vid, "uri": uri, "stage": stage, "error": error}}


def clip_record(vid: str, row: dict) -> dict:
    """The clip columns written to clips/ and hdf5/, from one result row."""
    return {"video_id": vid, "clip_index": int(row["clip_index"]), "start_s": float(row["start_s"]),
            "end_s": float(row["end_s"]), "valid_frames": int(row["valid_frames"]),
            "frame_indices": np.asarray(row["frame_indices"], np.int64),
            "embedding": np.asarray(row["embedding"], np.float32), "logits": np.asarray(row["logits"], np.float32)}
