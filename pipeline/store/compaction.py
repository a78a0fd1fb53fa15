"""Compaction: merge small committed segments into large files, atomically and ledger-aware.

Nightly runs leave many small parts (64 videos each by default); downstream readers pay per file. This
merges runs of consecutive small live segments (commit order) into segments whose largest file reaches
`target_mb`, so an output holds few large files per kind, whatever the number of nights. Each group:

  1. its merged files (the same rows, in the same order) are published *staged*, under hidden names
     (`videos/.compact-<new>.parquet`, …): not live, and invisible to globs;
  2. a compaction record is published (ledger.record_compaction): from here on our readers read the
     new segment (its staged files) instead of the group — the switch is that one object;
  3. the group's files are deleted;
  4. the staged files are renamed to their published names.
Then the ledger is folded. A glob over a data folder therefore never sees a video twice (between 3 and
4 it misses the group's videos for a moment). A kill leaves staged files of a segment no record names
(deleted), files of replaced segments (deleted) or staged files of a live segment (published): the
garbage collection that starts every run and every compaction finishes the job. A group whose members
differ in schema (written by different versions) is left as it is. A reader that keeps file paths
across a compaction (a DataLoader over HDF5 parts, a list of `part_urls`) must list them again.

A stop (`stop()` true: a SIGTERM or SIGINT, run/drain.py) is taken between the steps: a group whose
record is not yet published is abandoned whole — its staged files and its local merge folder removed,
checked before each member is read and before each staged file and the record are published — a group
whose record is published is finished (steps 3–4), no other group is started, and the ledger is folded;
the next compaction merges the rest. Anything else that ends a group before its record (an error, a
second signal) removes what it staged too.

A merged segment is named after its first member (`<first>-c<stamp>`), so names still sort in commit
order. The HDF5 layout is unchanged; its `provenance` attribute lists the members' run ids.
"""
from __future__ import annotations

import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.store import segments
from pipeline.errors import DamagedOutputError
from pipeline.faults import failpoint
from pipeline.scratch import scratch
from pipeline.store.lease import WriterLease
from pipeline.store.ledger import Ledger
from pipeline.store.ledger_state import LedgerState
from pipeline.store.segments import DATA_DIRS
from pipeline import storage
from pipeline.store import hdf5 as hdf5_sink
from pipeline.store.hdf5 import Incompatible
from pipeline.store.publish import publish_once

log = logging.getLogger(__name__)

ROW_GROUP_BYTES = 64 * 2**20           # Parquet row groups of merged files, about this size


@dataclass
class CompactionReport:
    groups: int = 0
    skipped: int = 0                   # groups left as they are (members of different schemas)
    segments_before: int = 0
    segments_after: int = 0
    files_before: dict[str, int] = field(default_factory=dict)
    files_after: dict[str, int] = field(default_factory=dict)
    bytes_rewritten: int = 0
    seconds: float = 0.0
    stopped: bool = False              # a stop was asked: the groups not merged are left for the next one


class Abandoned(Exception):
    """A stop was asked before the group's record: the group is abandoned, nothing of it kept."""


def _never() -> bool:
    return False


def _check(stop: Callable[[], bool]) -> None:
    if stop():
        raise Abandoned()


def compact(ledger: Ledger | str, target_mb: float = 256, state: LedgerState | None = None,
            stop: Callable[[], bool] = _never) -> CompactionReport:
    """Merge small live segments of `ledger` (or output URL) into segments of about `target_mb`; `stop()`
    true ends it early, each group merged or abandoned whole (module doc)."""
    ledger = Ledger(ledger) if isinstance(ledger, str) else ledger
    started, report = time.perf_counter(), CompactionReport()
    with WriterLease(ledger) as lease:
        state = ledger.claim(lease) if ledger.epoch is None else (state or ledger.load())
        ledger.collect_garbage(state)
        files = Listing(ledger, state)
        report.segments_before, report.files_before = len(state.segments), files.counts()
        for group in plan(files.sizes(), int(target_mb * 2**20)):
            if stop():
                report.stopped = True
                break
            _merge_or_skip(ledger, files, group, report, stop)
        state = ledger.fold()
        report.segments_after, report.files_after = len(state.segments), Listing(ledger, state).counts()
    report.seconds = time.perf_counter() - started
    log.info("compaction: %d merges, %d skipped, %d → %d segments", report.groups, report.skipped,
             report.segments_before, report.segments_after)
    return report


class Listing:
    """The live segments' files, listed once: folder → segment → (path, bytes)."""

    def __init__(self, ledger: Ledger, state: LedgerState):
        self.live = sorted(state.segments)
        self.files = {sub: {} for sub in DATA_DIRS}
        for sub in DATA_DIRS:
            for info in ledger.ls(sub, detail=True):
                segment, _ = segments.parse(info["name"].rsplit("/", 1)[-1])
                if segment in state.segments:
                    self.files[sub][segment] = (info["name"], int(info.get("size") or 0))

    def sizes(self) -> dict[str, int]:
        """Live segment → bytes of its largest file, in commit (name) order."""
        return {seg: max([self.files[sub][seg][1] for sub in DATA_DIRS if seg in self.files[sub]] or [0])
                for seg in self.live}

    def members(self, sub: str, group: list[str]) -> list[str]:
        return [self.files[sub][seg][0] for seg in group if seg in self.files[sub]]

    def counts(self) -> dict[str, int]:
        return {sub: len(self.files[sub]) for sub in DATA_DIRS}


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


def _merge_or_skip(ledger: Ledger, files: Listing, group: list[str], report: CompactionReport,
                   stop: Callable[[], bool]) -> None:
    try:
        report.bytes_rewritten += merge_group(ledger, files, group, merged_name(group[0]), stop=stop)
        report.groups += 1
    except Incompatible as exc:
        report.skipped += 1
        log.warning("not merging %s … %s: %s", group[0], group[-1], exc)
    except Abandoned:
        log.info("a stop was asked: the merge of %s … %s is abandoned, nothing of it kept", group[0], group[-1])


def merge_group(ledger: Ledger, files: Listing, group: list[str], name: str, drop: frozenset = frozenset(),
                kind: str = "compaction", stop: Callable[[], bool] = _never) -> int:
    """Steps 1–4 of the module doc for one group, leaving out the rows of the `drop` ids (retired: no
    longer done, see retire.py); returns the bytes written. Raises Abandoned, having removed what it
    staged, when `stop()` turns true before the record."""
    staged = _stage(ledger, files, group, name, drop, stop)
    try:
        failpoint("compact.data")
        _check(stop)                      # the last moment to abandon: the record makes the merge count
    except BaseException:
        _unstage(ledger, name, list(staged))
        raise
    ledger.record_compaction(f"{kind}-{name}", [name], group, retired=sorted(drop))
    failpoint("compact.record")
    ledger.check_fence()              # after the record: a writer that claims later holds it (records.py)
    ledger.fs.rm([p for sub in DATA_DIRS for p in files.members(sub, group)])
    failpoint("compact.delete")
    for sub in staged:
        ledger.fs.mv(ledger.path(sub, segments.file_name(name, sub, staged=True)),
                     ledger.path(sub, segments.file_name(name, sub)))
    failpoint("compact.publish")
    return sum(staged.values())


def _stage(ledger: Ledger, files: Listing, group: list[str], name: str, drop: frozenset,
           stop: Callable[[], bool]) -> dict[str, int]:
    """Write the group's merged files (less the `drop` ids' rows) and publish them staged; folder → bytes.
    When it does not return (Abandoned: `stop()` turned true; an error; a signal) nothing it staged is left."""
    written, published = {}, []
    try:
        with scratch("compact") as tmp:
            for sub in DATA_DIRS:
                members = files.members(sub, group)
                if members:
                    local = os.path.join(tmp, f"{sub}-{segments.file_name(name, sub)}")
                    (_merge_hdf5 if sub == "hdf5" else _merge_parquet)(ledger, members, local, drop, stop)
                    written[sub] = os.path.getsize(local)
            for sub in written:
                _check(stop)
                published.append(sub)
                publish_once(os.path.join(tmp, f"{sub}-{segments.file_name(name, sub)}"),
                             ledger.url(sub, segments.file_name(name, sub, staged=True)))
    except BaseException:
        _unstage(ledger, name, published)
        raise
    return written


def _unstage(ledger: Ledger, name: str, subs: list[str]) -> None:
    """Remove the staged files of `name` in the folders `subs` (no record names them: they are ours). A
    failing store is not waited for on the way out: the next run's garbage collection removes them."""
    if storage.failing():
        return
    for sub in subs:
        try:
            ledger.fs.rm(ledger.path(sub, segments.file_name(name, sub, staged=True)))
        except FileNotFoundError:
            pass                                  # its publish never got that far
        except Exception as exc:                  # noqa: BLE001 - must not hide why the merge ended
            log.warning("could not remove the staged %s (%s: %s); the next run's garbage collection will",
                        segments.file_name(name, sub, staged=True), type(exc).__name__, exc)


def _merge_parquet(ledger: Ledger, members: list[str], local: str, drop: frozenset = frozenset(),
                   stop: Callable[[], bool] = _never) -> None:
    """Concatenate Parquet files of one schema, in order, into one file with row groups of ~64 MB,
    leaving out the rows of the `drop` ids (Abandoned, between two members, when `stop()` is true)."""
    writer, buffered, size = None, [], 0
    for path in members:
        _check(stop)
        table = _read_member(ledger, path)
        if drop:
            table = table.filter(pc.invert(pc.is_in(table.column("video_id"), value_set=pa.array(sorted(drop)))))
        writer = writer or pq.ParquetWriter(local, table.schema, compression="zstd")
        if not table.schema.equals(writer.schema):
            raise Incompatible(f"{path} has the schema {table.schema}, not {writer.schema}")
        buffered, size = buffered + [table], size + table.nbytes
        if size >= ROW_GROUP_BYTES:
            writer.write_table(pa.concat_tables(buffered))
            buffered, size = [], 0
    if buffered:
        writer.write_table(pa.concat_tables(buffered))
    writer.close()


def _read_member(ledger: Ledger, path: str) -> pa.Table:
    """A Parquet member of a group; a file that cannot be read stops the compaction, named, before
    anything is recorded or deleted."""
    try:
        with ledger.fs.open(path, "rb") as fh:
            return pq.read_table(fh)
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DamagedOutputError(f"{path} cannot be read ({type(exc).__name__}: {exc}); nothing was merged or "
                                 f"deleted: `vidfeat verify` lists the damage") from None


def _merge_hdf5(ledger: Ledger, members: list[str], local: str, drop: frozenset = frozenset(),
                stop: Callable[[], bool] = _never) -> None:
    """Concatenate HDF5 parts in order, leaving out the `drop` ids (store/hdf5.py: merge; Abandoned, before
    a member is opened, when `stop()` is true). The merge reads every member twice (its layout, then its
    rows) in many small pieces; a remote member is therefore fetched whole, once, next to `local`, and
    read from there."""
    def checked(open_member):
        def opened(path):
            _check(stop)
            return open_member(path)
        return opened

    if storage.is_local(ledger.fs):
        return hdf5_sink.merge(checked(lambda path: ledger.fs.open(path, "rb")), members, local, drop)
    copies = {path: f"{local}.member-{i}" for i, path in enumerate(members)}
    try:
        for path, copy in copies.items():
            _check(stop)
            ledger.fs.get_file(path, copy)
        hdf5_sink.merge(checked(lambda path: open(copies[path], "rb")), members, local, drop)
    finally:
        for copy in copies.values():
            if os.path.exists(copy):
                os.remove(copy)
