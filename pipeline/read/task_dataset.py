"""Task-recognition training on the features: a labels file, and a torch Dataset of labelled videos.

    ds = TaskDataset(OUT, "labels.csv")                # clip sequences + video embedding + class index
    loader = DataLoader(ds, batch_size=32, collate_fn=collate)
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.read.features import SOURCES, load_clips, load_videos
from pipeline.read.parts import h5_parts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Labels:
    """A labels file read: `label_of` video_id → label (as written); `classes[i]` is the label of class
    index i. Classes are sorted, numerically when every label is an integer, else as strings, so the
    same file always gives the same mapping."""

    label_of: dict[str, str]
    classes: list[str]

    @cached_property
    def class_index(self) -> dict[str, int]:
        """label → class index."""
        return {c: i for i, c in enumerate(self.classes)}

    def select(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, class indices int64) of the `ids` that have a label, in the order of `ids`."""
        rows = [i for i, vid in enumerate(ids) if vid in self.label_of]
        return (np.array(rows, np.int64),
                np.array([self.class_index[self.label_of[ids[i]]] for i in rows], np.int64))


def read_labels(path: str, classes: Sequence[str] | None = None) -> Labels:
    """csv `video_id,label` (header required; local path or fsspec URL) → Labels. `classes` fixes the
    mapping (e.g. the training set's, for a test file); a label outside it is an error."""
    import fsspec

    with fsspec.open(path, "r", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"video_id", "label"} <= set(reader.fieldnames):
            raise ConfigError(f"{path}: a labels file needs the header 'video_id,label', got {reader.fieldnames}")
        label_of = _unique_labels(path, ((r["video_id"].strip(), r["label"].strip()) for r in reader))
    found = sorted(set(label_of.values()), key=_class_order(label_of.values()))
    if classes is None:
        return Labels(label_of, found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ConfigError(f"{path}: labels {unknown[:10]} are not among the given classes")
    return Labels(label_of, list(classes))


def _unique_labels(path: str, pairs) -> dict[str, str]:
    label_of: dict[str, str] = {}
    for vid, label in pairs:
        if label_of.setdefault(vid, label) != label:
            raise ConfigError(f"{path}: video {vid!r} has two labels, {label_of[vid]!r} and {label!r}")
    return label_of


def _class_order(labels):
    numeric = all(_is_int(v) for v in labels)
    return (lambda v: (int(v), v)) if numeric else str


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


class TaskDataset(torch.utils.data.Dataset):
    """Committed videos that have a label, as task-recognition items:

        {"video_id": str, "clips": float32 [L, D] (clip embeddings in time order),
         "video": float32 [D] (video embedding), "label": int64 [] (class index)}

    `labels` is a csv path (see read_labels) or a Labels; `classes` / `class_index` expose the mapping.
    Videos with no label are left out (`unlabelled` counts them); labelled ids that are not committed
    are ignored (`missing` lists them). source="hdf5" memory-maps local parts and reads an item's rows
    only when asked; source="parquet" loads every clip embedding at construction.
    """

    def __init__(self, out: str, labels: str | Labels, source: str = "hdf5", classes: Sequence[str] | None = None):
        self.labels = labels if isinstance(labels, Labels) else read_labels(labels, classes)
        if source not in SOURCES:
            raise ConfigError(f"unknown source {source!r}; use one of {SOURCES}")
        self.parts = h5_parts(out) if source == "hdf5" else [_MemoryPart.from_output(out)]
        committed = {vid for p in self.parts for vid in p.ids}
        selected = [self.labels.select(p.ids) for p in self.parts]
        self.items = [(k, int(r)) for k, (rows, _) in enumerate(selected) for r in rows]
        self._targets = np.concatenate([y for _, y in selected] + [np.zeros(0, np.int64)])
        self.unlabelled = len(committed) - len(self.items)
        self.missing = sorted(set(self.labels.label_of) - committed)
        log.info("%d labelled videos (%d committed without a label, %d labelled but not committed)",
                 len(self.items), self.unlabelled, len(self.missing))

    @property
    def classes(self) -> list[str]:
        return self.labels.classes

    @property
    def class_index(self) -> dict[str, int]:
        return self.labels.class_index

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        k, r = self.items[i]
        part = self.parts[k]
        vid = part.ids[r]
        a, b = part.offset[r], part.offset[r + 1]
        return {"video_id": vid,
                "clips": torch.tensor(part.array("clips/embedding")[a:b]),
                "video": torch.tensor(part.array("embedding")[r]),
                "label": torch.tensor(self._targets[i], dtype=torch.int64)}

    def targets(self) -> np.ndarray:
        """int64 [len(self)]: the class index of every item, without reading any features."""
        return self._targets


@dataclass
class _MemoryPart:
    """The whole output as one in-memory part, with H5Part's interface (ids, offset, array)."""

    ids: list[str]
    offset: np.ndarray
    arrays: dict[str, np.ndarray]

    @classmethod
    def from_output(cls, out: str) -> "_MemoryPart":
        videos, clips = load_videos(out, "parquet"), load_clips(out, "parquet")
        if videos.ids != clips.ids:
            raise ConfigError(f"{out}: videos/ and clips/ list different videos")
        return cls(videos.ids, clips.offset, {"embedding": videos.embedding, "clips/embedding": clips.embedding})

    def array(self, name: str) -> np.ndarray:
        return self.arrays[name]


def collate(items: list[dict]) -> dict:
    """TaskDataset items → a batch of B videos, clip sequences zero-padded to the longest (L):

        {"clips": float32 [B, L, D], "mask": bool [B, L] (True on real clips), "lengths": int64 [B],
         "video": float32 [B, D], "label": int64 [B], "video_id": list of B str}
    """
    lengths = torch.tensor([len(item["clips"]) for item in items], dtype=torch.int64)
    clips = torch.nn.utils.rnn.pad_sequence([item["clips"] for item in items], batch_first=True)
    return {"clips": clips, "mask": torch.arange(clips.shape[1])[None, :] < lengths[:, None],
            "lengths": lengths, "video": torch.stack([item["video"] for item in items]),
            "label": torch.stack([item["label"] for item in items]),
            "video_id": [item["video_id"] for item in items]}
