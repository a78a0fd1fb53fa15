"""Rows of an index that never count again (tombstones), so a retired or redone video's old features never
come back from it — not even when the video is later done again from the uri it first had.

Coverage (coverage.py) keys a row by its video and the uri it was made from. That hides the old row of a
video redone from another uri, but a video moved from A to B and back to A is done with A again, with the
features of its third extraction: its first row would match again. So a hidden row is tombstoned, for
good, in two places:

- the run tombstones every row of the videos it is about to retire (`--redo-changed`) *before* the
  retirement's record is published (`tombstone_videos`): a kill in between leaves the index lacking those
  videos (searched exactly, and re-added from their live rows by the next refresh), never counting a row
  the retirement made stale;
- every refresh tombstones the rows it finds hidden (`tombstone_hidden`), whoever retired them.

Tombstones are a sorted int64 .npy of row numbers named by the manifest (`tombstones`); a generation that
adds some names the same FAISS file and chunks. A rebuild holds live rows only and starts without any.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.index.coverage import Coverage
from pipeline.index.published import (KINDS, Published, next_generation, publish_generation, read_manifest,
                                      read_rows_of, staging_dir)
from pipeline.store.ledger import Ledger

log = logging.getLogger(__name__)


def tombstone_videos(ledger: Ledger, ids: list[str]) -> None:
    """Tombstone every row of the videos `ids` in each index of `ledger`'s output (a writer that has
    claimed; no FAISS file is read or written)."""
    wanted = pa.array(sorted(set(ids)), pa.string())
    for kind in KINDS:
        manifest = read_manifest(ledger, kind)
        if manifest is None:
            continue
        rows, old = read_rows_of(ledger, kind, manifest, ["video_id"])
        found = np.flatnonzero(pc.is_in(rows.column("video_id"), value_set=wanted).to_numpy(zero_copy_only=False))
        publish_tombstones(ledger, kind, manifest, old, found)


def tombstone_hidden(ledger: Ledger, kind: str, published: Published, cover: Coverage) -> Published:
    """`published` with every row `cover` hides tombstoned (a new generation when that adds any)."""
    manifest = publish_tombstones(ledger, kind, published.manifest, published.tombstones,
                                  np.flatnonzero(cover.hidden))
    if manifest is published.manifest:
        return published
    return dataclasses.replace(published, manifest=manifest, tombstones=np.flatnonzero(cover.hidden))


def publish_tombstones(ledger: Ledger, kind: str, manifest: dict, old: np.ndarray | None,
                       new: np.ndarray) -> dict:
    """Publish a generation of `manifest`'s index whose tombstones are `old` ∪ `new`; returns its manifest,
    or `manifest` itself when `new` adds none."""
    old = np.zeros(0, np.int64) if old is None else np.asarray(old, np.int64)
    rows = np.union1d(old, np.asarray(new, np.int64)).astype(np.int64)
    if len(rows) == len(old):
        return manifest
    gen = next_generation(ledger, kind)
    name = f"{gen}.tombstones.npy"
    with staging_dir() as staging:
        np.save(os.path.join(staging, name), rows)
        manifest = {**manifest, "generation": gen, "tombstones": name, "created_at": time.time()}
        publish_generation(ledger, kind, manifest, {name: os.path.join(staging, name)})
    log.info("%s: %d row(s) of the %s index tombstoned (%d in all)", ledger.out, len(rows) - len(old), kind,
             len(rows))
    return manifest
