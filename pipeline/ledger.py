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

import io
import json
import logging
import time

from fsspec.core import url_to_fs

from pipeline.errors import ConfigError
from pipeline.faults import failpoint
from pipeline.ledger_state import LedgerState, from_index_table, replay, to_index_table
from pipeline.sinks import publish_bytes

log = logging.getLogger(__name__)

DATA_DIRS = ("videos", "clips", "hdf5", "failures")
FOLD_EVERY = 256                    # records a run leaves unfolded at most (bounds a load after a crash)
LOAD_ATTEMPTS = 5                   # a concurrent fold can move what a load is reading: start again


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

    def load(self) -> LedgerState:
        """The state: the newest index plus the records not folded into it."""
        for attempt in range(LOAD_ATTEMPTS):
            try:
                return self._load_once()
            except FileNotFoundError:                    # a fold moved a record or an index meanwhile
                if attempt == LOAD_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _load_once(self) -> LedgerState:
        pending = self._json_files("ledger")
        base = self._read_index()
        todo = [p for p in pending if _stem(p) not in base.records]
        return replay(base, [self._read_json(p) for p in todo])

    def _read_index(self) -> LedgerState:
        indexes = self.index_files()
        if not indexes:
            return LedgerState()
        try:
            with self.fs.open(indexes[-1], "rb") as fh:
                return from_index_table(_read_parquet(fh.read()))
        except FileNotFoundError:
            raise
        except Exception as exc:                          # noqa: BLE001 - any damage means: rebuild
            log.warning("ledger index %s is damaged (%s: %s); rebuilding it from the part records",
                        indexes[-1], type(exc).__name__, exc)
            return self.rebuild(damaged=indexes[-1])

    def rebuild(self, damaged: str | None = None) -> LedgerState:
        """Replay every record (archived and pending), publish the result as a new index, drop `damaged`."""
        records = [self._read_json(p) for p in self._json_files("ledger/records") + self._json_files("ledger")]
        state = replay(LedgerState(), records)
        state = LedgerState(state.done_ids, state.failures, state.segments, state.records)
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
        """Fold the records not yet in the index into a new index generation (see module doc)."""
        state = state or self.load()
        if not state.unfolded:
            return state
        self._publish_index(state)
        failpoint("fold.index")
        self.fs.makedirs(self.path("ledger", "records"), exist_ok=True)
        for name in state.unfolded:
            try:
                self.fs.mv(self.path("ledger", f"{name}.json"), self.path("ledger", "records", f"{name}.json"))
            except FileNotFoundError:                    # moved by an earlier, interrupted fold
                pass
        failpoint("fold.records")
        for old in self.index_files()[:-1]:
            self.fs.rm(old)
        return LedgerState(state.done_ids, state.failures, state.segments, state.records)

    def maybe_fold(self, state: LedgerState) -> LedgerState:
        """Fold when FOLD_EVERY records are waiting."""
        return self.fold(state) if len(state.unfolded) >= FOLD_EVERY else state

    def _publish_index(self, state: LedgerState) -> None:
        import pyarrow.parquet as pq

        existing = self.index_files()
        gen = int(_name(existing[-1])[len("index-"):-len(".parquet")]) + 1 if existing else 0
        buffer = io.BytesIO()
        pq.write_table(to_index_table(state), buffer, compression="zstd")
        publish_bytes(buffer.getvalue(), self.url("ledger", "index", f"index-{gen:08d}.parquet"))

    # ------------------------------------------------------------------ files of the state

    def collect_garbage(self, state: LedgerState) -> list[str]:
        """Delete data files of segments that are not live (uncommitted or replaced) and leftover
        temporaries; return them."""
        removed = []
        for sub in DATA_DIRS:
            for path in self.ls(sub):
                name = _name(path)
                if name.startswith(".tmp-") or segment_of(name) not in state.segments:
                    self.fs.rm(path)
                    removed.append(path)
        if removed:
            log.warning("removed %d file(s) of uncommitted or replaced parts", len(removed))
        return removed

    def committed_files(self, sub: str, state: LedgerState | None = None) -> list[str]:
        """Published files of live segments under `sub` (videos, clips, hdf5, failures), in commit order.

        The listing is taken between two loads that agree on the live segments: a live segment's files
        exist for as long as it is live (merged files are published before their record, replaced ones
        deleted after), so a compaction meanwhile cannot make the listing miss or double a video."""
        for _ in range(LOAD_ATTEMPTS):
            before = state or self.load()
            listed = self.ls(sub)
            if self.load().segments == before.segments:
                return sorted(p for p in listed if segment_of(_name(p)) in before.segments
                              and not _name(p).startswith("."))
            state = None
        raise FileNotFoundError(f"{self.out}: the live parts kept changing while {sub}/ was listed")

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


def segment_of(filename: str) -> str:
    """`part-abc-00001.parquet` → `part-abc-00001` (the segment a data file belongs to)."""
    return filename.split(".", 1)[0]


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _stem(path: str) -> str:
    return _name(path)[:-len(".json")]


def _read_parquet(data: bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data))
