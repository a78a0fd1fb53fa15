"""What an output directory holds, as columns: done ids, failures, live segments — and how records change it.

A *segment* is a set of data files sharing one name, `videos/<seg>.parquet`, `clips/<seg>.parquet`,
`hdf5/<seg>.h5`, `failures/<seg>.parquet` (each kind only when it has rows): a committed part, or the
merge of several made by compaction. A *record* is one ledger JSON file, published last:

    part record        {"part": P, "committed_at": t, "epoch": e, "seq": n, "done": [ids], "uris": [uris],
                        "failed": [{video_id, uri, stage, error}]}
                       → segment P becomes live; its ids are done (with the uri each was made from:
                         `uris`, absent in records written before it existed); its failures are failed
    compaction record  {"kind": "compaction", "part": C, "committed_at": t, "epoch": e, "seq": n, "segments": [S...],
                        "replaces": [R...], "retired": [ids]}
                       → segments R stop being live, segments S (holding R's rows less the `retired`
                         ids) start; retired ids are no longer done (`--redo-changed`, see retire.py)

Replaying records in commit order gives the state: by epoch (claims are exclusive, so epochs are
totally ordered), then by the writer's own sequence number `seq` (one writer an epoch), never by a clock
(hosts' clocks differ and step back); records written before `seq` existed fall back to `committed_at`
within their epoch, then to the name. A record already applied is skipped by name, so replay is
idempotent. A later failure never undoes a success; a later success
clears a failure. Everything is Arrow columns, so a million done ids cost ~0.1 s, not a Python set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc

FAILURE_COLUMNS = ("video_id", "uri", "stage", "error")
_EMPTY_FAILURES = pa.table({c: pa.array([], pa.string()) for c in FAILURE_COLUMNS})


@dataclass(frozen=True)
class LedgerState:
    done_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    done_uris: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))   # aligned; null: not recorded
    failures: pa.Table = field(default_factory=lambda: _EMPTY_FAILURES)   # one row per failed, not done video
    segments: frozenset[str] = frozenset()          # live segments
    records: frozenset[str] = frozenset()           # names of the records applied
    unfolded: tuple[str, ...] = ()                  # applied records not yet in the index (oldest first)
    epoch: int = 0                                  # the epoch of the index it was loaded from (records.py)
    fenced: tuple[str, ...] = ()                    # pending records that do not count (claims.py)

    @property
    def parts(self) -> frozenset[str]:
        """The live segments (the name from before compaction existed)."""
        return self.segments

    @cached_property
    def done(self) -> set[str]:
        """Done ids as a Python set (small outputs and tests; big ones use `done_ids`)."""
        return set(self.done_ids.to_pylist())

    @cached_property
    def failed(self) -> dict[str, dict]:
        """video_id → {"video_id", "uri", "stage", "error"} of every failed video."""
        return {row["video_id"]: row for row in self.failures.to_pylist()}

    def todo_mask(self, ids: pa.ChunkedArray | pa.Array, retry_failed: bool = False,
                  retry_transient: bool = True) -> pa.ChunkedArray:
        """Boolean per id: still to do — not done, and not failed, unless `retry_failed` or (with
        `retry_transient`) the failure may pass: I/O, timeouts, a video the pipeline lost, inference."""
        failed = self.failures
        if retry_transient:
            failed = failed.filter(pc.invert(transient(failed)))
        skip = self.done_ids if retry_failed else pa.concat_arrays(
            [self.done_ids, failed.column("video_id").combine_chunks()])
        return pc.invert(pc.is_in(ids, value_set=skip))

    def changed(self, corpus: pa.Table) -> pa.Table:
        """Done videos of `corpus` (video_id, uri) whose uri there differs from the one they were made
        from: (video_id, uri, committed_uri), in corpus order."""
        done = pa.table({"video_id": self.done_ids, "committed_uri": self.done_uris})
        joined = corpus.select(["video_id", "uri"]).join(done, "video_id", join_type="inner")
        differ = pc.fill_null(pc.not_equal(joined.column("uri"), joined.column("committed_uri")), False)
        order = pc.index_in(joined.column("video_id"), value_set=corpus.column("video_id"))
        return joined.filter(differ).take(pc.sort_indices(order.filter(differ)))

    def pending(self, video_ids, retry_failed: bool = False) -> list[str]:
        """Ids of `video_ids` still to do, in order."""
        ids = pa.array(list(video_ids), pa.string())
        return ids.filter(self.todo_mask(ids, retry_failed)).to_pylist()


TRANSIENT = ("io:", "timeout:", "incomplete:")        # failure kinds that may pass (errors.DecodeError.KINDS)


def transient(failures: pa.Table) -> pa.ChunkedArray:
    """Boolean per failure row: whether it may pass when tried again (a next run retries it)."""
    error, stage = failures.column("error"), failures.column("stage")
    kinds = [pc.starts_with(error, prefix) for prefix in TRANSIENT]
    hit = pc.equal(stage, "infer")
    for kind in kinds:
        hit = pc.or_(hit, kind)
    return pc.fill_null(hit, False)


def replay(base: LedgerState, records: list[dict]) -> LedgerState:
    """`base` with `records` applied in commit order (records already in `base.records` are skipped)."""
    new = sorted((r for r in records if r["part"] not in base.records), key=commit_order)
    if not new:
        return base
    added, replaced, done, failed, cleared = set(), set(), {}, [], set()
    for record in new:
        if record.get("kind") == "compaction":
            added.update(record["segments"])
            replaced.update(record["replaces"])
            retired = set(record.get("retired", []))
            done.update(dict.fromkeys(retired, _RETIRED))
            failed = [f for f in failed if f["video_id"] not in retired]      # retired: to do, not failed
            cleared |= retired
            continue
        added.add(record["part"])
        uris = record.get("uris") or [None] * len(record.get("done", []))
        done.update(zip(record.get("done", []), uris))
        failed.extend({c: str(f[c]) for c in FAILURE_COLUMNS} for f in record.get("failed", []))
    segments = (base.segments | added) - replaced      # names are never reused: order does not matter
    done_ids, done_uris = _done(base, done)
    earlier = base.failures.filter(pc.invert(pc.is_in(base.failures.column("video_id"),
                                                      value_set=pa.array(sorted(cleared), pa.string()))))
    names = tuple(r["part"] for r in new)
    return LedgerState(done_ids, done_uris, _latest_failures(earlier, failed, done_ids), frozenset(segments),
                       base.records | set(names), base.unfolded + names, base.epoch, base.fenced)


def commit_order(record: dict) -> tuple:
    """A record's place in commit order (module doc): epoch, the writer's sequence, then legacy keys."""
    return int(record.get("epoch", 0)), int(record.get("seq", -1)), record.get("committed_at", 0), record["part"]


_RETIRED = object()


def _done(base: LedgerState, latest: dict) -> tuple[pa.Array, pa.Array]:
    """Done ids and their uris: `base`'s, updated by `latest` (id → uri, or _RETIRED: no longer done)."""
    if not latest:
        return base.done_ids, base.done_uris
    keep = pc.invert(pc.is_in(base.done_ids, value_set=pa.array(list(latest), pa.string())))
    now = {vid: uri for vid, uri in latest.items() if uri is not _RETIRED}
    return (pa.concat_arrays([base.done_ids.filter(keep), pa.array(list(now), pa.string())]),
            pa.concat_arrays([base.done_uris.filter(keep), pa.array(list(now.values()), pa.string())]))


def _latest_failures(base: pa.Table, rows: list[dict], done_ids: pa.Array) -> pa.Table:
    """The last failure of each id (base rows first, then `rows` in order), minus done ids."""
    table = pa.concat_tables([base.select(list(FAILURE_COLUMNS)), _failure_table(rows)])
    table = table.filter(pc.invert(pc.is_in(table.column("video_id"), value_set=done_ids)))
    if table.num_rows == 0:
        return _EMPTY_FAILURES
    table = table.append_column("_order", pa.array(range(table.num_rows), pa.int64()))
    last = table.group_by("video_id").aggregate([("_order", "max")]).column("_order_max")
    return table.filter(pc.is_in(table.column("_order"), value_set=last)).drop_columns(["_order"])


def _failure_table(rows: list[dict]) -> pa.Table:
    return pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in FAILURE_COLUMNS})


# ====================================================================== the index file

INDEX_SCHEMA = pa.schema([("kind", pa.string()), ("name", pa.string()), ("uri", pa.string()),
                          ("stage", pa.string()), ("error", pa.string())])
KINDS = ("done", "failed", "segment", "record")


def to_index_table(state: LedgerState) -> pa.Table:
    """The state as one long table (kind, name, uri, stage, error), with its row counts in the metadata."""
    f = state.failures
    parts = {
        "done": {"name": state.done_ids, "uri": state.done_uris},
        "failed": {"name": f.column("video_id"), "uri": f.column("uri"), "stage": f.column("stage"),
                   "error": f.column("error")},
        "segment": {"name": pa.array(sorted(state.segments), pa.string())},
        "record": {"name": pa.array(sorted(state.records), pa.string())},
    }
    tables = [_long(kind, cols) for kind, cols in parts.items()]
    counts = {kind: len(cols["name"]) for kind, cols in parts.items()}
    return pa.concat_tables(tables).replace_schema_metadata({"vidfeat_ledger_index": "1", "epoch": str(state.epoch),
                                                             "counts": json.dumps(counts)})


def _long(kind: str, cols: dict) -> pa.Table:
    n = len(cols["name"])
    full = {c: cols.get(c, pa.nulls(n, pa.string())) for c in INDEX_SCHEMA.names if c != "kind"}
    return pa.table({"kind": pa.array([kind] * n, pa.string()), **full},
                    schema=INDEX_SCHEMA)


def from_index_bytes(data: bytes) -> LedgerState:
    """The state an index file's bytes hold; raises (pyarrow's or ValueError) when they are not an index."""
    import pyarrow.parquet as pq

    return from_index_table(pq.read_table(pa.BufferReader(data)))


def from_index_table(table: pa.Table) -> LedgerState:
    """The inverse of `to_index_table`; raises ValueError when the table is not a whole index."""
    meta = table.schema.metadata or {}
    if meta.get(b"vidfeat_ledger_index") != b"1":
        raise ValueError("not a ledger index (no vidfeat_ledger_index metadata)")
    expected = json.loads(meta[b"counts"])
    by_kind = {k: table.filter(pc.equal(table.column("kind"), k)) for k in KINDS}
    found = {k: t.num_rows for k, t in by_kind.items()}
    if found != expected:
        raise ValueError(f"ledger index holds {found} rows, its metadata says {expected}")
    failed = by_kind["failed"].rename_columns(["kind", "video_id", "uri", "stage", "error"]).select(
        list(FAILURE_COLUMNS))
    records = frozenset(by_kind["record"].column("name").to_pylist())
    done = by_kind["done"]
    return LedgerState(done.column("name").combine_chunks(), done.column("uri").combine_chunks(), failed,
                       frozenset(by_kind["segment"].column("name").to_pylist()), records,
                       epoch=int(meta.get(b"epoch", b"0")))
