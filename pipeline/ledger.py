"""What is done and what failed: the commit protocol of an output directory.

A part (a few dozen videos) is committed in this order:
  1. its Parquet and HDF5 files are written and published (`sinks.publish_file`),
  2. then its ledger record `ledger/<part>.json` is published — the marker written last.
A video is done exactly when a record lists it. A run killed between 1 and 2 leaves files of a part
with no record: `collect_garbage()` deletes them before the next run starts, so a video id appears at
most once in the live files of `videos/` and `hdf5/`, ever. `run.json` pins the fingerprint of what
changes features; a run with another one is refused. See ledger_state.py for records and segments.

Loading costs the same few requests however many parts were ever committed. Records are *folded* into
a consolidated index (`ledger/index/index-<gen>.parquet`, see ledger_state.py) at the end of every run,
every `FOLD_EVERY` records during one, and after compaction:
  1. the index of generation g+1 is published: the previous index plus the records not in it,
     naming every record it holds;
  2. those records move to `ledger/records/` (kept: the truth an index is rebuilt from);
  3. older index generations are deleted.
`load()` lists the records still in `ledger/`, then reads the newest index, and replays the listed
records it does not hold: a kill at any step above leaves a directory that loads the same. An index that
cannot be read whole is reported and rebuilt from every record.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import time

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipeline import segments
from pipeline.errors import ConfigError
from pipeline.faults import failpoint
from pipeline.ledger_state import LedgerState, from_index_table, replay, to_index_table
from pipeline.sinks import publish_bytes

log = logging.getLogger(__name__)

FOLD_EVERY = 256                    # records a run leaves unfolded at most (bounds a load after a crash)
LOAD_ATTEMPTS = 5                   # a concurrent fold can move what a load is reading: start again


def _damage_kinds() -> tuple:
    import pyarrow as pa

    return (pa.ArrowInvalid, ValueError, KeyError, TypeError)    # parse and validation errors, not I/O


DAMAGE = _damage_kinds()


class Ledger:
    """The ledger of output directory `out` (local path or fsspec URL)."""

    def __init__(self, out: str):
        self.out = out.rstrip("/")
        self.fs, self.root = url_to_fs(self.out)

    def url(self, *parts: str) -> str:
        """A URL under the output directory (what `publish_*` takes)."""
        return "/".join((self.out, *parts))

    def path(self, *parts: str) -> str:
        """The same location as a path of `self.fs` (what `self.fs.open` takes)."""
        return "/".join((self.root, *parts))

    # ------------------------------------------------------------------ reading the state

    def load(self, repair: bool = False) -> LedgerState:
        """The state: the newest index plus the records not folded into it. A damaged index is rebuilt
        from the records; with `repair` (writers only: they hold the lease) the rebuilt one is published."""
        for attempt in range(LOAD_ATTEMPTS):
            try:
                return self._load_once(repair)
            except FileNotFoundError:                    # a fold moved a record or an index meanwhile
                if attempt == LOAD_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _load_once(self, repair: bool) -> LedgerState:
        pending = self._json_files("ledger")
        base = self._read_index(repair)
        todo = [p for p in pending if _stem(p) not in base.records]
        return replay(base, [self._read_json(p) for p in todo])

    def _read_index(self, repair: bool) -> LedgerState:
        indexes = self.index_files()
        if not indexes:
            return LedgerState()
        try:
            with self.fs.open(indexes[-1], "rb") as fh:
                return from_index_table(_read_parquet(fh.read()))
        except DAMAGE as exc:
            log.warning("ledger index %s is damaged (%s: %s); rebuilding it from the part records%s",
                        indexes[-1], type(exc).__name__, exc, "" if repair else " (in memory: a run repairs it)")
            return self.rebuild(damaged=indexes[-1] if repair else None, publish=repair)

    def rebuild(self, damaged: str | None = None, publish: bool = True) -> LedgerState:
        """Replay every record (pending first, then archived: a record a fold moves meanwhile is in one of
        the two listings); with `publish`, publish the result as a new index and drop `damaged`."""
        paths = self._json_files("ledger")
        paths += self._json_files("ledger/records")
        records = {}
        for path in paths:
            records.setdefault(_stem(path), path)
        state = dataclasses.replace(replay(LedgerState(), [self._read_json(p) for p in records.values()]),
                                    unfolded=())
        if publish:
            self._publish_index(state)
            if damaged and self.fs.exists(damaged):
                self.fs.rm(damaged)
        log.warning("ledger index rebuilt from %d records: %d done, %d failed", len(records),
                    len(state.done_ids), state.failures.num_rows)
        return state

    def index_files(self) -> list[str]:
        """Published index generations, oldest first."""
        return sorted(p for p in self.ls("ledger/index")
                      if _name(p).startswith("index-") and _name(p).endswith(".parquet"))

    # ------------------------------------------------------------------ writing

    def record(self, part: str, done: list[str], failed: list[dict]) -> None:
        """Publish the commit record of `part` — call only after all its files are published."""
        payload = {"part": part, "committed_at": time.time(), "done": done,
                   "failed": [{k: f[k] for k in ("video_id", "uri", "stage", "error")} for f in failed]}
        self._publish_record(part, payload)

    def record_compaction(self, name: str, segments: list[str], replaces: list[str]) -> None:
        """Publish that `segments` (published, holding exactly the rows of `replaces`) replace `replaces`."""
        payload = {"kind": "compaction", "part": name, "committed_at": time.time(),
                   "segments": segments, "replaces": replaces}
        self._publish_record(name, payload)

    def _publish_record(self, name: str, payload: dict) -> None:
        publish_bytes(json.dumps(payload).encode(), self.url("ledger", f"{name}.json"))

    def fold(self, state: LedgerState | None = None) -> LedgerState:
        """Fold the records not yet in the index into a new index generation, and archive every pending
        record the index holds (also those an interrupted fold left behind). See module doc."""
        pending = self._json_files("ledger")
        state = state or self.load(repair=True)
        if state.unfolded:
            self._publish_index(state)
            failpoint("fold.index")
        self._archive([p for p in pending if _stem(p) in state.records])
        failpoint("fold.records")
        for old in self.index_files()[:-1]:
            self.fs.rm(old)
        return dataclasses.replace(state, unfolded=())

    def _archive(self, paths: list[str]) -> None:
        """Move records to `ledger/records/`: renames on local disk, one batch of copies then one bulk
        delete on object stores."""
        if not paths:
            return
        targets = [self.path("ledger", "records", _name(p)) for p in paths]
        if not isinstance(self.fs, LocalFileSystem):
            self.fs.copy(paths, targets)
            self.fs.rm(paths)
            return
        self.fs.makedirs(self.path("ledger", "records"), exist_ok=True)
        for src, dst in zip(paths, targets):
            self.fs.mv(src, dst)

    def _publish_index(self, state: LedgerState) -> None:
        import pyarrow.parquet as pq

        existing = self.index_files()
        gen = int(_name(existing[-1])[len("index-"):-len(".parquet")]) + 1 if existing else 0
        buffer = io.BytesIO()
        pq.write_table(to_index_table(state), buffer, compression="zstd")
        publish_bytes(buffer.getvalue(), self.url("ledger", "index", f"index-{gen:08d}.parquet"))

    # ------------------------------------------------------------------ files of the state

    def collect_garbage(self, state: LedgerState) -> list[str]:
        """Delete files of segments that are not live, and temporaries (see segments.collect_garbage)."""
        return segments.collect_garbage(self, state)

    def committed_files(self, sub: str, state: LedgerState | None = None) -> list[str]:
        """Files of live segments under `sub` (videos, clips, hdf5, failures), in commit order."""
        return segments.live_files(self, sub, state)

    def check_fingerprint(self, fingerprint: str, config: dict) -> None:
        """First run: pin `fingerprint` in run.json. Later runs: refuse a different one."""
        path = self.path("run.json")
        if self.fs.exists(path):
            with self.fs.open(path, "r") as fh:
                pinned = json.load(fh)
            if pinned["fingerprint"] != fingerprint:
                raise ConfigError(
                    f"{self.out} holds features made with another configuration (fingerprint "
                    f"{pinned['fingerprint']}, this run {fingerprint}): what changes features — model, "
                    f"checkpoint, sampling, preprocessing, decode mode — must stay the same; "
                    f"write to a new output directory instead. Pinned: {json.dumps(pinned.get('features'))}")
            return
        publish_bytes(json.dumps({"fingerprint": fingerprint, "features": config}, indent=2).encode(),
                      self.url("run.json"))

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

    def _read_json(self, path: str) -> dict:
        with self.fs.open(path, "rb") as fh:
            return json.loads(fh.read())


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _stem(path: str) -> str:
    return _name(path)[:-len(".json")]


def _read_parquet(data: bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data))
