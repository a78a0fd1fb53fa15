"""What is done and what failed: the commit protocol of an output directory.

A writer (a run, a compaction) holds the output's lease (lease.py) and first `claim`s an epoch
(records.py): it loads the state with certainty (a missing or damaged index is rebuilt from the
records; a record that cannot be read stops it, naming the file, before anything is deleted), claims
the next epoch exclusively and publishes the state as that epoch's first index. Then:
  1. a part's Parquet and HDF5 files are written and published (`sinks.publish_file`),
  2. then its ledger record `ledger/<part>.json` is published — the marker written last, stamped with
     the writer's epoch, after checking that no later epoch was claimed (fencing).
A video is done exactly when a record that counts lists it. A run killed between 1 and 2 leaves files
of a part with no record: `collect_garbage()` deletes them at the next writer's start, so a video id
appears at most once in the live files of `videos/` and `hdf5/`, ever. `run.json` pins the fingerprint
of what changes features (at the first commit); a run with another one is refused.

Loading costs the same few requests however many parts were ever committed. Records are *folded* into
a consolidated index (`ledger/index/index-<epoch>-<seq>.parquet`, see ledger_state.py) when a writer
starts, every `FOLD_EVERY` records, at the end of every run and after compaction:
  1. the next index is published: the previous index plus the records not in it, naming every record
     it holds;
  2. those records move to `ledger/records/` (kept: the truth an index is rebuilt from); pending
     records that do not count (a fenced writer's) move to `ledger/fenced/`;
  3. older index generations are deleted.
`load()` lists the records still in `ledger/`, then reads the newest index, and replays the listed
records it does not hold and that count: a kill at any step above leaves a directory that loads the same.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import time

from fsspec.core import url_to_fs

from pipeline.store import segments
from pipeline import storage
from pipeline.store import claims, records
from pipeline.store.claims import Claims
from pipeline.errors import ConfigError, LeaseLostError
from pipeline.faults import failpoint
from pipeline.store.pinning import Pinned
from pipeline.store.ledger_state import LedgerState, from_index_bytes, replay, to_index_table
from pipeline.store.publish import publish_bytes

log = logging.getLogger(__name__)

FOLD_EVERY = 256                    # records a run leaves unfolded at most (bounds a load after a crash)
LOAD_ATTEMPTS = 5                   # a concurrent fold can move what a load is reading: start again


def _damage_kinds() -> tuple:
    import pyarrow as pa

    return (pa.ArrowInvalid, ValueError, KeyError, TypeError)    # parse and validation errors, not I/O


DAMAGE = _damage_kinds()


class Ledger(Pinned):
    """The ledger of output directory `out` (local path or fsspec URL)."""

    def __init__(self, out: str):
        self.out = out.rstrip("/")
        fs, self.root = url_to_fs(self.out, use_listings_cache=False)   # a listing is always the store's
        self.fs = storage.guarded(fs)           # every call under a deadline, retried, then a clear error
        self.epoch: int | None = None           # set by claim(): this writer's epoch (records.py)
        self.lease = None                       # the WriterLease it claimed under, if any
        self.seq = 0                            # the next record's place in this writer's commit order
        self.index_seq = 0                      # the next index name's sequence: never one tried before

    def url(self, *parts: str) -> str:
        """A URL under the output directory (what `publish_*` takes)."""
        return "/".join((self.out, *parts))

    def path(self, *parts: str) -> str:
        """The same location as a path of `self.fs` (what `self.fs.open` takes)."""
        return "/".join((self.root, *parts))

    # ------------------------------------------------------------------ reading the state

    def load(self, repair: bool = False, exclude: int | None = None) -> LedgerState:
        """The state: the newest index plus the pending records that count (claims.py). A missing or
        damaged index is rebuilt from every record, in memory (a writer's claim publishes it). A record
        that cannot be read raises DamagedOutputError. `exclude`: a claim to leave out (the claimant's own
        while it loads); `repair` is kept for callers (writers call `claim`)."""
        for attempt in range(LOAD_ATTEMPTS):
            try:
                return self._load_once(exclude)
            except FileNotFoundError:                    # a fold moved a record or an index meanwhile
                if attempt == LOAD_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _load_once(self, exclude: int | None) -> LedgerState:
        pending = self._json_files("ledger")
        view = Claims(self, exclude)
        base = self._read_index(view)
        todo = [self._read_record(p) for p in pending if _stem(p) not in base.records]
        fresh = [r for r in todo if view.counts(r, base.records)]
        fenced = tuple(sorted(r["part"] for r in todo if not view.counts(r, base.records)))
        if fenced:
            log.warning("%s: %d ledger record(s) of a writer that had lost its lease do not count: %s",
                        self.out, len(fenced), ", ".join(fenced[:5]))
        return dataclasses.replace(replay(base, fresh), fenced=fenced)

    def _read_index(self, view: Claims) -> LedgerState:
        indexes = self.index_files()
        if not indexes:
            return self.rebuild(view)
        try:
            return from_index_bytes(self.fs.cat_file(indexes[-1]))
        except DAMAGE as exc:
            log.warning("ledger index %s is damaged (%s: %s); rebuilding it from the part records (in memory: "
                        "the next run or compaction publishes it)", indexes[-1], type(exc).__name__, exc)
            return self.rebuild(view)

    def rebuild(self, view: Claims | None = None) -> LedgerState:
        """The state from every record (none of them in an index: a fold publishes it): archived ones
        count (a writer archives only what counts), a pending one as claims.py says."""
        view = view or Claims(self)
        listed = self._json_files("ledger")              # pending first: a fold that archives one of them
        archived = {_stem(p): p for p in self._json_files("ledger/records")}   # meanwhile is seen here
        pending = [p for p in listed if _stem(p) not in archived]
        kept = [self._read_record(p) for p in archived.values()]
        kept += [r for r in map(self._read_record, pending) if view.counts(r, frozenset())]
        state = replay(LedgerState(epoch=view.newest), kept)        # every record unfolded: a fold publishes it
        if archived:                                                 # (none: a new output, never folded)
            log.warning("ledger index of %s rebuilt from %d records: %d done, %d failed", self.out, len(kept),
                        len(state.done_ids), state.failures.num_rows)
        return state

    def index_files(self) -> list[str]:
        """Published index generations, oldest first (by epoch, then sequence)."""
        named = [(records.index_key(_name(p)), p) for p in self.ls("ledger/index")]
        return [p for key, p in sorted((k, p) for k, p in named if k is not None)]

    # ------------------------------------------------------------------ writing

    def claim(self, lease=None) -> LedgerState:
        """Become the output's writer (claims.py): claim the next epoch exclusively — the fence — then load
        the state with certainty, say which pending records it accepts, publish the state as this
        epoch's first index and fold. Raises LeaseLostError when another writer claimed that epoch first."""
        epoch = self._next_epoch()
        claims.claim(self, epoch, lease)
        self.epoch, self.lease = epoch, lease
        failpoint("claim.epoch")
        state = self._certain(self.load(exclude=epoch), epoch)
        claims.accept(self, epoch, state.records & {_stem(p) for p in self._json_files("ledger")})
        state = dataclasses.replace(state, epoch=epoch)
        self._publish_index(state)
        state = self.fold(dataclasses.replace(state, unfolded=()))
        claims.prune(self, epoch)
        return state

    def _next_epoch(self) -> int:
        indexes = [records.index_key(_name(p))[0] for p in self.index_files()]
        return max([Claims(self).newest, *indexes]) + 1

    def _certain(self, state: LedgerState, epoch: int) -> LedgerState:
        """`state`, or the state rebuilt from every record when records were archived that its index does
        not hold (an older index generation restored by hand, the newest lost)."""
        missing = {_stem(p) for p in self._json_files("ledger/records")} - state.records
        if not missing:
            return state
        log.warning("%s: the ledger index lacks %d archived record(s) (%s); rebuilding it from the records",
                    self.out, len(missing), ", ".join(sorted(missing)[:5]))
        return self.rebuild(Claims(self, exclude=epoch))

    def check_fence(self) -> None:
        """Raise LeaseLostError when this writer may no longer write: its lease is lost, or a later epoch
        was claimed. A no-op for a ledger that never claimed (tests, tools that hold no lease)."""
        if self.epoch is None:
            return
        if self.lease is not None:
            self.lease.check()
        newest = Claims(self).newest                 # any later claim (older ones may have been pruned)
        if newest > self.epoch:
            raise LeaseLostError(f"{self.out}: another writer took over (epoch {newest}) while this one "
                                 f"(epoch {self.epoch}) was paused; it stops without committing more")

    def record(self, part: str, done: list[str], failed: list[dict], uris: list[str] | None = None) -> None:
        """Publish the commit record of `part` — call only after all its files are published. `uris`:
        the uri each done video was made from (what `vidfeat status` compares with the manifest's)."""
        payload = {"part": part, "committed_at": time.time(), "done": done,
                   "failed": [{k: f[k] for k in ("video_id", "uri", "stage", "error")} for f in failed]}
        if uris is not None:
            payload["uris"] = uris
        self._publish_record(part, payload)

    def record_compaction(self, name: str, segments: list[str], replaces: list[str], retired=()) -> None:
        """Publish that `segments` (published, holding the rows of `replaces` less the `retired` ids)
        replace `replaces`; retired ids are no longer done."""
        payload = {"kind": "compaction", "part": name, "committed_at": time.time(),
                   "segments": segments, "replaces": replaces}
        if retired:
            payload["retired"] = list(retired)
        self._publish_record(name, payload)

    def _publish_record(self, name: str, payload: dict) -> None:
        self.check_fence()
        payload["epoch"], payload["seq"] = self.epoch or 0, self.seq
        self.seq += 1
        with claims.overtaken_is_lost(self):
            publish_bytes(json.dumps(payload).encode(), self.url("ledger", f"{name}.json"), exclusive=True)

    def fold(self, state: LedgerState | None = None) -> LedgerState:
        """Fold the records not yet in the index into a new index generation, delete older generations,
        then archive every pending record the index holds (also those an interrupted fold left behind)
        and set aside the pending records that do not count (`ledger/fenced/`). Archiving last means an
        older generation never outlives records it lacks. See module doc."""
        pending = self._json_files("ledger")
        state = state or self.load()
        self.check_fence()
        if state.unfolded:
            self._publish_index(state)
            failpoint("fold.index")
        for old in self.index_files()[:-1]:
            self.fs.rm(old)
        self._archive([p for p in pending if _stem(p) in state.records], "records")
        self._archive([p for p in pending if _stem(p) in state.fenced], "fenced")
        failpoint("fold.records")
        return dataclasses.replace(state, unfolded=(), fenced=())

    def _archive(self, paths: list[str], sub: str) -> None:
        """Move records to `ledger/<sub>/`: renames on local disk, one batch of copies then one bulk
        delete on object stores."""
        if not paths:
            return
        targets = [self.path("ledger", sub, _name(p)) for p in paths]
        if not storage.is_local(self.fs):
            try:
                self.fs.copy(paths, targets)
            except FileNotFoundError:                # another fold archived some meanwhile: one by one
                for src, dst in zip(paths, targets):
                    self.fs.mv(src, dst)
            self.fs.rm(paths)
            return
        self.fs.makedirs(self.path("ledger", sub), exist_ok=True)
        for src, dst in zip(paths, targets):
            self.fs.mv(src, dst)

    def _publish_index(self, state: LedgerState) -> None:
        import pyarrow.parquet as pq

        epoch = state.epoch if self.epoch is None else self.epoch
        keys = [records.index_key(_name(p)) for p in self.index_files()]
        seq = max([s + 1 for e, s in keys if e == epoch] + [self.index_seq])
        self.index_seq = seq + 1          # an upload abandoned at its deadline may land later: never reuse its name
        buffer = io.BytesIO()
        pq.write_table(to_index_table(dataclasses.replace(state, epoch=epoch)), buffer, compression="zstd")
        with claims.overtaken_is_lost(self):
            publish_bytes(buffer.getvalue(), self.url("ledger", "index", records.index_name(epoch, seq)), exclusive=True)

    # ------------------------------------------------------------------ files of the state

    def collect_garbage(self, state: LedgerState) -> list[str]:
        """Delete files of segments that are not live, and temporaries (see segments.collect_garbage)."""
        return segments.collect_garbage(self, state)

    def committed_files(self, sub: str, state: LedgerState | None = None) -> list[str]:
        """Files of live segments under `sub` (videos, clips, hdf5, failures), in commit order."""
        return segments.live_files(self, sub, state)

    def check_reachable(self) -> None:
        """Refuse (exit 2) an object-store output whose bucket does not exist or cannot be listed."""
        if storage.is_local(self.fs):
            return
        bucket = self.root.split("/", 1)[0]
        if not self.fs.exists(bucket):
            raise ConfigError(f"{self.out}: the bucket {bucket!r} does not exist, or these credentials cannot "
                              f"see it")

    def ls(self, sub: str, detail: bool = False) -> list:
        """Entries directly under `sub` (paths; with `detail`, fsspec info dicts), sorted; [] if none."""
        try:
            self.fs.invalidate_cache()
            entries = self.fs.ls(self.path(sub), detail=detail)
        except FileNotFoundError:
            return []
        return sorted(entries, key=lambda e: e["name"]) if detail else sorted(entries)

    def _json_files(self, sub: str) -> list[str]:
        return [p for p in self.ls(sub) if p.endswith(".json") and not _name(p).startswith(".")]

    def _read_record(self, path: str) -> dict:
        return records.parse(self.fs.cat_file(path), self.url(*path[len(self.root) + 1:].split("/")))


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _stem(path: str) -> str:
    return _name(path)[:-len(".json")]
