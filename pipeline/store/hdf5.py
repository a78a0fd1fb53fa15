"""HDF5 parts laid out for training: contiguous [N, D] arrays, an id index and clip offsets.

Layout (schema version 1) is documented in schemas/README.md.
"""
from __future__ import annotations

import contextlib
import json

import h5py
import numpy as np

import schemas
from pipeline.errors import DamagedOutputError


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


# ====================================================================== merging parts (compaction, retiring)

class Incompatible(Exception):
    """Parts written with different layouts: they are not merged."""


def merge(open_member, members: list[str], local: str, drop: frozenset = frozenset()) -> None:
    """Concatenate HDF5 parts (`open_member(path)` opens one as a binary file) in order into `local`:
    one contiguous dataset per name, clip offsets shifted, the rows of the `drop` ids left out."""
    shapes, meta = _layout(open_member, members, drop)
    with h5py.File(local, "w") as out:
        out.attrs["schema_version"] = schemas.SCHEMA_VERSION
        out.attrs["provenance"] = json.dumps(meta, sort_keys=True)
        for name, (shape, dtype) in shapes.items():
            out.create_dataset(name, shape=shape, dtype=dtype)
        rows = {name: 0 for name in shapes}
        out["clip_offset"][0], rows["clip_offset"], clip_base = 0, 1, 0
        for path in members:
            with open_member(path) as fh, h5py.File(fh, "r") as part:
                videos, clips = _kept(part, drop)
                for name in shapes:
                    data = _rows(part, name, videos, clips, clip_base)
                    out[name][rows[name]:rows[name] + len(data)] = data
                    rows[name] += len(data)
                clip_base += int(clips.sum())


@contextlib.contextmanager
def _opened(fh, path: str):
    """h5py.File over `fh`; a file that is not whole HDF5 is DamagedOutputError naming `path`."""
    try:
        part = h5py.File(fh, "r")
    except OSError as exc:
        raise DamagedOutputError(f"{path} cannot be read as HDF5 ({exc}); nothing was merged or deleted: "
                                 f"`vidfeat verify` lists the damage") from None
    with part:
        yield part


def _kept(part: h5py.File, drop: frozenset) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the part's videos and clips to keep (all but the `drop` ids')."""
    counts = np.diff(part["clip_offset"][()])
    videos = np.ones(len(counts), bool)
    if drop:
        videos = ~np.isin(part["video_id"].asstr()[()].astype(object), list(drop))
    return videos, np.repeat(videos, counts)


def _rows(part: h5py.File, name: str, videos: np.ndarray, clips: np.ndarray, clip_base: int) -> np.ndarray:
    """The kept rows of dataset `name` (clip offsets shifted by `clip_base`)."""
    if name == "clip_offset":
        return clip_base + np.cumsum(np.diff(part[name][()])[videos])
    return part[name][()][clips if name.startswith("clips/") else videos]


def _layout(open_member, members: list[str], drop: frozenset) -> tuple[dict, dict]:
    """Merged dataset name → (shape, dtype), and the merged provenance (members' run ids joined).
    Members must hold the same datasets, with the same dtypes and row shapes."""
    lengths, specs, runs, meta = {}, None, [], {}
    for path in members:
        with open_member(path) as fh, _opened(fh, path) as part:
            found = {name: (part[name].shape[1:], part[name].dtype) for name in _datasets(part)}
            if specs is not None and found != specs:
                raise Incompatible(f"{path} holds the datasets {sorted(found)}, unlike the group's first part")
            specs, meta = found, json.loads(part.attrs.get("provenance", "{}"))
            runs.append(str(meta.get("run_id", "")))
            videos, clips = _kept(part, drop)
            for name in found:
                lengths[name] = lengths.get(name, 0) + int((clips if name.startswith("clips/") else videos).sum())
    lengths["clip_offset"] += 1
    meta["run_id"] = ",".join(dict.fromkeys(r for r in runs if r))
    return {n: ((lengths[n], *specs[n][0]), specs[n][1]) for n in specs}, meta


def _datasets(group: h5py.Group, prefix: str = "") -> list[str]:
    """Every dataset below `group`, as paths (`embedding`, `clips/embedding`, …)."""
    names = []
    for key, item in group.items():
        path = f"{prefix}{key}"
        names += _datasets(item, path + "/") if isinstance(item, h5py.Group) else [path]
    return names
