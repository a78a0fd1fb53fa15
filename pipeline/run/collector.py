"""The driver's side of the results: clip rows in, whole videos (or failures) out.

Rows reach the driver in no particular order across videos (inference batches clips of several
videos). `VideoCollector.add(row)` keeps a video's clips until clips 0..last are all in, then returns
the video event; a failure row ends its video at once (its other clips, earlier or later, are dropped).
A row of a video that is already finished is ignored, so a task Ray re-ran after a lost node cannot
add a video twice. Memory holds the clips of unfinished videos and the keys of finished ones.

Rows are joined on their `row` column, the video's position in the run's table of videos to do, never on
their text: a video's id and uri are taken from that table, byte for byte as the manifest gave them, so
nothing a stage does to text (a fixed-width numpy string drops trailing NULs) can put one video's clips
under another's id.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.run.aggregate import aggregate_video

INCOMPLETE = "incomplete: the pipeline returned no final clip for this video"


class VideoCollector:
    """Assembles clip rows into videos. `todo` (video_id, uri) is the run's table of videos to do; a
    row's `row` is its position there. `add(row)` returns the events it completes:
    {"video": row, "clips": [...]} when a video's clips 0..last are all in, {"failure": {...}} when a
    video failed."""

    def __init__(self, todo: pa.Table):
        self.ids, self.uris = (todo.column(c).combine_chunks() for c in ("video_id", "uri"))
        self.clips: dict[int, dict[int, dict]] = {}
        self.last: dict[int, int] = {}
        self.finished: set[int] = set()

    def add(self, row: dict) -> list[dict]:
        key = int(row["row"])
        if key in self.finished:
            return []
        vid, uri = self.ids[key].as_py(), self.uris[key].as_py()
        if row["error"]:
            self._forget(key)
            return [failure(vid, uri, str(row["stage"]), str(row["error"]))]
        clip = clip_record(vid, row)
        self.clips.setdefault(key, {})[clip["clip_index"]] = clip
        if bool(row["last"]):
            self.last[key] = clip["clip_index"]
        if key in self.last and len(self.clips[key]) == self.last[key] + 1:
            return [self._finish(key, vid, uri)]
        return []

    def _finish(self, key: int, vid: str, uri: str) -> dict:
        clips = [c for _, c in sorted(self.clips[key].items())]
        self._forget(key)
        try:
            video = {"video_id": vid, "uri": uri, **aggregate_video(clips)}
        except ValueError as exc:
            return failure(vid, uri, "aggregate", str(exc))
        return {"video": video, "clips": clips}

    def _forget(self, key: int) -> None:
        self.finished.add(key)
        self.clips.pop(key, None)
        self.last.pop(key, None)

    def in_flight(self) -> set[int]:
        """The videos (rows of `todo`) that some clips of have come back, but not all."""
        return set(self.clips)

    def unfinished(self) -> list[dict]:
        """Failure events for the videos to do that never finished."""
        done = np.zeros(len(self.ids), bool)
        done[list(self.finished)] = True
        left = np.flatnonzero(~done)
        return [failure(v, u, "decode", INCOMPLETE) for v, u in
                zip(self.ids.take(left).to_pylist(), self.uris.take(left).to_pylist())]


def failure(vid: str, uri: str, stage: str, error: str) -> dict:
    return {"failure": {"video_id": vid, "uri": uri, "stage": stage, "error": error}}


def clip_record(vid: str, row: dict) -> dict:
    """The clip columns written to clips/ and hdf5/, from one result row."""
    return {"video_id": vid, "clip_index": int(row["clip_index"]), "start_s": float(row["start_s"]),
            "end_s": float(row["end_s"]), "valid_frames": int(row["valid_frames"]),
            "frame_indices": np.asarray(row["frame_indices"], np.int64),
            "embedding": np.asarray(row["embedding"], np.float32), "logits": np.asarray(row["logits"], np.float32)}
