"""`vidfeat verify OUT`: the output directory keeps its promises.

Checks: every part with a ledger record has readable files; every ledger-done video is present exactly
once in videos/ and in hdf5/, and nothing else is; Parquet and HDF5 hold the same numbers; shapes
agree across parts; values are finite; each video's clips are 0..num_clips-1 in clips/ and hdf5.
"""
from __future__ import annotations

import collections

import numpy as np

from pipeline.remote_file import readable_path
from pipeline.storage import is_local
from pipeline.store import segments
from pipeline.store.parquet import float_matrix
from pipeline.store.ledger import Ledger

_FLOAT_LISTS = ("embedding", "logits", "probs")        # fixed-size float32 lists → [N, D] arrays


def verify(out: str) -> dict:
    """A report {"ok", "problems": [...], "videos", "clips", "parts", "leftovers"}; never raises on bad
    content. `leftovers` (files no live part owns) are reported without failing the check."""
    ledger = Ledger(out)
    state, entries = segments.listing(ledger)              # each folder listed once, the state confirmed
    listed = {sub: {segments.parse(p.rsplit("/", 1)[-1])[0]: p for p in segments.live(state, paths)}
              for sub, paths in entries.items()}
    found = _Found()
    for part in sorted(state.segments):
        found.check(ledger, part, {sub: listed[sub].get(part) for sub in ("videos", "clips", "hdf5")},
                    part in listed["failures"])
    problems = found.problems + found.identity_problems(state.done)
    return {"out": out, "ok": not problems, "problems": problems, "videos": sum(found.parquet.values()),
            "clips": found.clips, "parts": len(state.segments), "leftovers": _leftovers(entries, listed)}


class _Found:
    """What the live parts hold, gathered part by part, and the problems met."""

    def __init__(self):
        self.problems: list[str] = []
        self.parquet: collections.Counter = collections.Counter()
        self.hdf5: collections.Counter = collections.Counter()
        self.shapes: set[tuple[int, int]] = set()
        self.clips = 0

    def check(self, ledger: Ledger, part: str, files: dict, has_failures: bool) -> None:
        if not any(files.values()):
            if not has_failures:
                self.problems.append(f"{part}: committed, but none of its files exists")
            return                                       # a part holding failures only
        try:
            videos, clips, h5 = _read_part(ledger, files)
        except Exception as exc:                         # noqa: BLE001 - every unreadable part is a finding
            self.problems.append(f"{part}: unreadable: {type(exc).__name__}: {exc}")
            return
        self.parquet.update(videos["video_id"])
        self.hdf5.update(h5["video_id"])
        self.shapes.add((videos["embedding"].shape[1], videos["logits"].shape[1]))
        self.clips += len(clips["video_id"])
        self.problems += [f"{part}: {p}" for p in _check_part(videos, clips, h5)]

    def identity_problems(self, done: set[str]) -> list[str]:
        """Every done video exactly once in videos/ and hdf5/, nothing else; one shape across parts."""
        problems = []
        for name, seen in (("videos/", self.parquet), ("hdf5/", self.hdf5)):
            problems += [f"{vid} appears {n} times in {name}" for vid, n in sorted(seen.items()) if n > 1]
            problems += [f"{vid} is done in the ledger but missing from {name}" for vid in sorted(done - set(seen))]
            problems += [f"{vid} is in {name} but not done in the ledger" for vid in sorted(set(seen) - done)]
        if len(self.shapes) > 1:
            problems.append(f"parts disagree on (embedding dim, classes): {sorted(self.shapes)}")
        return problems


def _leftovers(entries: dict[str, list[str]], listed: dict[str, dict[str, str]]) -> list[str]:
    """Files in the data folders that belong to no live segment: left by a run or compaction that was
    killed; our readers ignore them and the next run deletes them, but a glob would read them."""
    live = {path for files in listed.values() for path in files.values()}
    return sorted(p for paths in entries.values() for p in paths if p not in live)


def _read_part(ledger: Ledger, files: dict) -> tuple[dict, dict, dict]:
    import h5py
    import pyarrow.parquet as pq

    def table(path, columns):
        with ledger.fs.open(path, "rb") as fh:
            t = pq.read_table(fh, columns=columns)
        return {c: float_matrix(t.column(c)) if c in _FLOAT_LISTS else t.column(c).to_pylist() for c in columns}

    with readable_path(ledger.fs, files["hdf5"], is_local(ledger.fs)) as local, h5py.File(local, "r") as f:
        h5 = {k: f[k][()] for k in ("video_id", "num_clips", "clip_offset", "embedding", "logits", "probs")}
        h5.update({f"clips/{k}": f[f"clips/{k}"][()] for k in ("clip_index", "embedding", "logits")})
    h5["video_id"] = [v.decode() if isinstance(v, bytes) else str(v) for v in h5["video_id"]]
    videos = table(files["videos"], ["video_id", "num_clips", "embedding", "logits", "probs"])
    return videos, table(files["clips"], ["video_id", "clip_index", "embedding"]), h5


def _check_part(videos: dict, clips: dict, h5: dict) -> list[str]:
    problems = []
    if list(videos["video_id"]) != list(h5["video_id"]):
        return ["videos/ and hdf5/ list different videos"]
    for key in ("embedding", "logits", "probs"):
        if videos[key].shape != h5[key].shape:
            problems.append(f"{key}: Parquet {videos[key].shape} vs HDF5 {h5[key].shape}")
        elif not np.array_equal(videos[key], h5[key]):
            problems.append(f"{key}: Parquet and HDF5 numbers differ")
        if not np.isfinite(videos[key]).all():
            bad = [v for v, row in zip(videos["video_id"], videos[key]) if not np.isfinite(row).all()]
            problems.append(f"{key}: non-finite values for {bad[:5]}")
    by_video = collections.defaultdict(list)
    for vid, idx in zip(clips["video_id"], clips["clip_index"]):
        by_video[vid].append(idx)
    for i, (vid, n) in enumerate(zip(videos["video_id"], videos["num_clips"])):
        if sorted(by_video.get(vid, [])) != list(range(n)):
            problems.append(f"{vid}: clips/ holds clip indices {sorted(by_video.get(vid, []))}, expected 0..{n - 1}")
        lo, hi = int(h5["clip_offset"][i]), int(h5["clip_offset"][i + 1])
        if hi - lo != n or list(h5["clips/clip_index"][lo:hi]) != list(range(n)):
            problems.append(f"{vid}: hdf5 clip rows {lo}:{hi} do not hold clips 0..{n - 1}")
    if len(clips["video_id"]) and not np.array_equal(clips["embedding"], h5["clips/embedding"]):
        problems.append("clip embeddings: Parquet and HDF5 numbers differ")
    return problems
