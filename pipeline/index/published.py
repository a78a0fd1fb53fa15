"""An index in an output directory, published like a part: its files first, its manifest last.

    OUT/index/<kind>/                 kind: videos (one vector a video) | clips (one a clip: a moment)
      manifest-<epoch>-<seq>.json     the marker written last (exclusive create, fenced): what a reader opens
      <gen>.faiss                     the FAISS index of every row (rewritten by each generation)
      <gen>.rows.parquet              the rows generation <gen> added: video_id, uri (the ledger's, "" when
                                      it has none)[, clip_index, start_s, end_s]
      <gen>.vectors.npy               their exact unit vectors (float32, or float16), read to re-rank
      <gen>.tombstones.npy            int64 row numbers hidden for good (coverage.py, retired.py), if any

A manifest names its generation `g<epoch>-<seq>` (the writer's ledger epoch: order without clocks), the
parameters, the FAISS file, the chunks of rows and vectors (an extension adds a chunk and keeps the
older ones: a nightly extension writes its new rows and the FAISS file, not every vector again), the
live segments whose rows it holds, and the row count. Readers take the newest manifest; files without
a manifest (a killed build) are never read, and the next index writer deletes them, with the files and
manifests the newest manifest no longer names — after checking its fence, like every deletion. A reader
whose files were deleted meanwhile opens the newest manifest again (`load_published`).
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.index.ann import AnnParams, ExactVectors, set_threads
from pipeline.storage import is_local
from pipeline.store.ledger import Ledger
from pipeline.store.publish import publish_bytes, publish_file

log = logging.getLogger(__name__)

KINDS = ("videos", "clips")
MANIFEST = re.compile(r"^manifest-(\d{8})-(\d{6})\.json$")
OPEN_ATTEMPTS = 5


@dataclass
class Published:
    """An opened index: its manifest, FAISS index, rows (Arrow table) and exact vectors."""

    manifest: dict
    ann: object
    rows: pa.Table
    exact: ExactVectors
    tombstones: np.ndarray | None = None

    @property
    def params(self) -> AnnParams:
        return AnnParams.from_dict(self.manifest["params"])

    @property
    def segments(self) -> frozenset[str]:
        return frozenset(self.manifest["segments"])


def folder(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"index kind {kind!r}: expected one of {KINDS}")
    return f"index/{kind}"


def manifests(ledger: Ledger, kind: str) -> list[str]:
    """Paths of the published manifests of `kind`, oldest first."""
    named = [(MANIFEST.match(p.rsplit("/", 1)[-1]), p) for p in ledger.ls(folder(kind))]
    return [p for m, p in sorted(((m.groups(), p) for m, p in named if m), key=lambda mp: mp[0])]


def read_manifest(ledger: Ledger, kind: str) -> dict | None:
    """The newest manifest of `kind`, or None when the output has no such index."""
    found = manifests(ledger, kind)
    return json.loads(ledger.fs.cat_file(found[-1])) if found else None


def load_published(ledger: Ledger, kind: str) -> Published | None:
    """The newest index of `kind`, opened (None: none published). Exact vectors of a local output are
    memory-mapped (read only where a query re-ranks), a remote output's are read whole."""
    for attempt in range(OPEN_ATTEMPTS):
        manifest = read_manifest(ledger, kind)
        if manifest is None:
            return None
        try:
            return _open(ledger, kind, manifest)
        except FileNotFoundError:                       # a newer generation replaced it meanwhile
            if attempt == OPEN_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _open(ledger: Ledger, kind: str, manifest: dict) -> Published:
    import faiss

    set_threads()
    path = lambda name: ledger.path(folder(kind), name)          # noqa: E731
    local = is_local(ledger.fs)
    if local and not os.path.exists(path(manifest["faiss"])):    # FAISS would say RuntimeError
        raise FileNotFoundError(path(manifest["faiss"]))
    ann = faiss.read_index(path(manifest["faiss"])) if local else faiss.deserialize_index(
        np.frombuffer(ledger.fs.cat_file(path(manifest["faiss"])), np.uint8))
    rows, tombstones = read_rows_of(ledger, kind, manifest)
    vectors = [np.load(path(c["vectors"]), mmap_mode="r") if local else
               np.load(io.BytesIO(ledger.fs.cat_file(path(c["vectors"])))) for c in manifest["chunks"]]
    exact = ExactVectors(vectors[0] if len(vectors) == 1 else _Chunks(vectors))
    return Published(manifest, ann, rows, exact, tombstones)


def read_rows_of(ledger: Ledger, kind: str, manifest: dict, columns: list[str] | None = None
                 ) -> tuple[pa.Table, np.ndarray | None]:
    """The rows table (its `columns`, default all) and the tombstoned row numbers of `manifest`'s index."""
    local = is_local(ledger.fs)
    path = lambda name: ledger.path(folder(kind), name)          # noqa: E731
    read = (lambda name: path(name)) if local else (lambda name: io.BytesIO(ledger.fs.cat_file(path(name))))
    rows = pa.concat_tables([pq.read_table(read(c["rows"]), columns=columns) for c in manifest["chunks"]])
    tombstones = np.load(read(manifest["tombstones"])) if manifest.get("tombstones") else None
    return rows, tombstones


class _Chunks:
    """Several [n_i, D] arrays (memmaps) read as one [Σn_i, D] array by row indices (`a[rows]`)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), parts[0].shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), self.shape[1]), np.float32)
        for p in np.unique(part):
            mine = part == p
            out[mine] = self.parts[p][rows[mine] - self.starts[p]]
        return out


def next_generation(ledger: Ledger, kind: str) -> str:
    """`g<epoch>-<seq>`: the writer's epoch, one more than any sequence of that epoch published."""
    epoch = ledger.epoch or 0
    seqs = [int(m.group(2)) for m in (MANIFEST.match(p.rsplit("/", 1)[-1]) for p in manifests(ledger, kind))
            if m and int(m.group(1)) == epoch]
    return f"g{epoch:08d}-{max(seqs, default=-1) + 1:06d}"


def publish_generation(ledger: Ledger, kind: str, manifest: dict, files: dict[str, str]) -> None:
    """Publish the local `files` ({name: local path}: consumed), then `manifest` (exclusive, fenced),
    then delete what the new manifest does not name."""
    for name, local in files.items():
        publish_file(local, ledger.url(folder(kind), name))
    ledger.check_fence()
    gen = manifest["generation"]
    publish_bytes(json.dumps(manifest).encode(), ledger.url(folder(kind), f"manifest-{gen[1:]}.json"), exclusive=True)
    collect_garbage(ledger, kind, manifest)


def collect_garbage(ledger: Ledger, kind: str, manifest: dict) -> list[str]:
    """Delete files of `kind`'s index that `manifest` (the newest) does not name, and older manifests."""
    named = {manifest["faiss"], f"manifest-{manifest['generation'][1:]}.json", manifest.get("tombstones")}
    named |= {c[f] for c in manifest["chunks"] for f in ("rows", "vectors")}
    listed = ledger.ls(folder(kind))
    ledger.check_fence()
    doomed = [p for p in listed if p.rsplit("/", 1)[-1] not in named]
    for path in doomed:
        ledger.fs.rm(path)
    return doomed


def local_files(gen: str, ann, rows: pa.Table, vectors: np.ndarray | None, staging: str) -> dict[str, str]:
    """Write a generation's files into the local folder `staging`: {name: path} (vectors None: no chunk)."""
    import faiss

    files = {f"{gen}.faiss": os.path.join(staging, f"{gen}.faiss")}
    faiss.write_index(ann, files[f"{gen}.faiss"])
    if vectors is not None:
        files[f"{gen}.rows.parquet"] = os.path.join(staging, f"{gen}.rows.parquet")
        pq.write_table(rows, files[f"{gen}.rows.parquet"], compression="zstd")
        files[f"{gen}.vectors.npy"] = os.path.join(staging, f"{gen}.vectors.npy")
        if not (isinstance(vectors, np.memmap) and vectors.filename == files[f"{gen}.vectors.npy"]):
            np.save(files[f"{gen}.vectors.npy"], vectors)
    return files


def staging_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="vidfeat-index-")
