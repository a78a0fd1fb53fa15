"""Compaction: merge small committed segments into large files, atomically and ledger-aware.

Nightly runs leave many small parts (64 videos each by default); downstream readers pay per file. This
merges runs of consecutive small live segments (commit order) into segments whose largest file reaches
`target_mb`, so an output holds few large files per kind, whatever the number of nights. Each group:

  1. its merged files (videos/, clips/, hdf5/, failures/ — the same rows, in the same order) are
     written locally and published under a new segment name: not live yet, no record names it;
  2. a compaction record is published (ledger.record_compaction): from here on readers see the new
     segment instead of the group — the switch is that one object;
  3. the group's files are deleted.
Then the ledger is folded. A kill after 1 leaves files no record names, after 2 files of replaced
segments: `collect_garbage` (run at the start of every run and every compaction) deletes both. No step
makes a video visible twice or not at all. One writer per output directory: do not compact while a
run writes to it (a run compacts by itself at its end).

A merged segment is named after its first member (`<first>-c<stamp>`), so names still sort in commit
order. The HDF5 layout is unchanged; its `provenance` attribute lists the members' run ids.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline.faults import failpoint
from pipeline.ledger import DATA_DIRS, Ledger, segment_of
from pipeline.ledger_state import LedgerState
from pipeline.sinks import publish_file

log = logging.getLogger(__name__)

EXT = {"videos": "parquet", "clips": "parquet", "hdf5": "h5", "failures": "parquet"}
ROW_GROUP_BYTES = 64 * 2**20           # Parquet row groups of merged files, about this size


@dataclass
class CompactionReport:
    groups: int = 0
    segments_before: int = 0
    segments_after: int = 0
    files_before: dict[str, int] = field(default_factory=dict)
    files_after: dict[str, int] = field(default_factory=dict)
    bytes_rewritten: int = 0
    seconds: float = 0.0


def compact(ledger: Ledger | str, target_mb: float = 256, state: LedgerState | None = None) -> CompactionReport:
    """Merge small live segments of `ledger` (or output URL) into segments of about `target_mb`."""
    ledger = Ledger(ledger) if isinstance(ledger, str) else ledger
    started, report = time.perf_counter(), CompactionReport()
    state = state or ledger.load()
    ledger.collect_garbage(state)
    sizes = segment_sizes(ledger, state)
    report.segments_before, report.files_before = len(state.segments), _file_counts(ledger)
    for group in plan(sizes, int(target_mb * 2**20)):
        report.bytes_rewritten += merge_group(ledger, group, merged_name(group[0]))
        report.groups += 1
    state = ledger.fold()
    report.segments_after, report.files_after = len(state.segments), _file_counts(ledger)
    report.seconds = time.perf_counter() - started
    log.info("compaction: %d groups, %d → %d segments", report.groups, report.segments_before,
             report.segments_after)
    return report


def segment_sizes(ledger: Ledger, state: LedgerState) -> dict[str, int]:
    """Live segment → bytes of its largest file, in commit (name) order."""
    sizes: dict[str, int] = {seg: 0 for seg in sorted(state.segments)}
    for sub in DATA_DIRS:
        for info in ledger.ls(sub, detail=True):
            seg = segment_of(info["name"].rsplit("/", 1)[-1])
            if seg in sizes:
                sizes[seg] = max(sizes[seg], int(info.get("size") or 0))
    return sizes


def plan(sizes: dict[str, int], target: int) -> list[list[str]]:
    """Groups of consecutive segments (in the order of `sizes`) to merge: each of their segments is
    smaller than `target`, a group closes when it reaches `target`; groups of one are left alone."""
    groups, current, total = [], [], 0
    for seg, size in sizes.items():
        if size >= target:
            groups.append(current)
            current, total = [], 0
            continue
        current.append(seg)
        total += size
        if total >= target:
            groups.append(current)
            current, total = [], 0
    groups.append(current)
    return [g for g in groups if len(g) > 1]


def merged_name(first: str) -> str:
    """`part-R-00003` (or `part-R-00003-c…`) → `part-R-00003-c<stamp>`: sorts where its first member did."""
    base = re.sub(r"-c\d{8}T\d{6}[0-9a-f]{4}$", "", first)
    return f"{base}-c{time.strftime('%Y%m%dT%H%M%S')}{uuid.uuid4().hex[:4]}"


def merge_group(ledger: Ledger, group: list[str], name: str) -> int:
    """Steps 1–3 of the module doc for one group; returns the bytes written."""
    written = 0
    with tempfile.TemporaryDirectory(prefix="vidfeat-compact-") as tmp:
        for sub in DATA_DIRS:
            members = _member_files(ledger, sub, group)
            if not members:
                continue
            local = os.path.join(tmp, f"{sub}.{EXT[sub]}")
            (_merge_hdf5 if sub == "hdf5" else _merge_parquet)(ledger, members, local)
            written += os.path.getsize(local)
            publish_file(local, ledger.url(sub, f"{name}.{EXT[sub]}"))
    failpoint("compact.data")
    ledger.record_compaction(f"compaction-{name}", [name], group)
    failpoint("compact.record")
    doomed = [p for sub in DATA_DIRS for p in _member_files(ledger, sub, group)]
    if doomed:
        ledger.fs.rm(doomed)
    failpoint("compact.delete")
    return written


def _member_files(ledger: Ledger, sub: str, group: list[str]) -> list[str]:
    wanted = {f"{seg}.{EXT[sub]}" for seg in group}
    return sorted(p for p in ledger.ls(sub) if p.rsplit("/", 1)[-1] in wanted)


def _merge_parquet(ledger: Ledger, members: list[str], local: str) -> None:
    """Concatenate Parquet files (same schema) in order into one file with row groups of ~64 MB."""
    writer, buffered, size = None, [], 0
    for path in members:
        with ledger.fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        if writer is None:
            writer = pq.ParquetWriter(local, table.schema, compression="zstd")
        buffered.append(table.cast(writer.schema))
        size += table.nbytes
        if size >= ROW_GROUP_BYTES:
            writer.write_table(pa.concat_tables(buffered), row_group_size=None)
            buffered, size = [], 0
    if buffered:
        writer.write_table(pa.concat_tables(buffered), row_group_size=None)
    writer.close()


def _merge_hdf5(ledger: Ledger, members: list[str], local: str) -> None:
    """Concatenate HDF5 parts in order: one contiguous dataset per name, clip offsets shifted."""
    shapes, meta = _hdf5_shapes(ledger, members)
    with h5py.File(local, "w") as out:
        out.attrs["schema_version"] = schemas.SCHEMA_VERSION
        out.attrs["provenance"] = json.dumps(meta, sort_keys=True)
        for name, (shape, dtype) in shapes.items():
            out.create_dataset(name, shape=shape, dtype=dtype)
        rows = {name: 0 for name in shapes}
        out["clip_offset"][0], rows["clip_offset"], clip_base = 0, 1, 0
        for path in members:
            with ledger.fs.open(path, "rb") as fh, h5py.File(fh, "r") as part:
                for name in shapes:
                    data = part[name][1:] + clip_base if name == "clip_offset" else part[name][()]
                    out[name][rows[name]:rows[name] + len(data)] = data
                    rows[name] += len(data)
                clip_base += int(part["clip_offset"][-1])


def _hdf5_shapes(ledger: Ledger, members: list[str]) -> tuple[dict, dict]:
    """Merged dataset name → (shape, dtype), and the merged provenance (members' run ids joined)."""
    names = schemas.HDF5_VIDEO_DATASETS + schemas.HDF5_CLIP_DATASETS
    lengths = {name: 0 for name in names}
    specs, runs, meta = {}, [], {}
    for path in members:
        with ledger.fs.open(path, "rb") as fh, h5py.File(fh, "r") as part:
            meta = json.loads(part.attrs.get("provenance", "{}"))
            runs.append(str(meta.get("run_id", "")))
            for name in names:
                lengths[name] += part[name].shape[0] - (1 if name == "clip_offset" else 0)
                specs[name] = (part[name].shape[1:], part[name].dtype)
    lengths["clip_offset"] += 1
    meta["run_id"] = ",".join(dict.fromkeys(r for r in runs if r))
    return {n: ((lengths[n], *specs[n][0]), specs[n][1]) for n in names}, meta


def _file_counts(ledger: Ledger) -> dict[str, int]:
    return {sub: sum(1 for p in ledger.ls(sub) if not p.rsplit("/", 1)[-1].startswith(".")) for sub in DATA_DIRS}
