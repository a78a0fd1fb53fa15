"""What is done and what failed: the commit protocol of an output directory.

A part (a few dozen videos) is committed in this order:
  1. its Parquet and HDF5 files are written and published (`sinks.publish_file`),
  2. then its ledger record `ledger/<part>.json` is published — the marker written last.
A video is done exactly when a ledger record lists it. A run killed between 1 and 2 leaves files of a
part with no record: `collect_garbage()` deletes them before the next run starts, so a video id
appears at most once in `videos/` and `hdf5/`, ever. Relaunching never changes the meaning of a part.
`run.json` pins the fingerprint of what changes features; a run with another one is refused.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from fsspec.core import url_to_fs

from pipeline.errors import ConfigError
from pipeline.sinks import publish_bytes

log = logging.getLogger(__name__)

DATA_DIRS = ("videos", "clips", "hdf5", "failures")


@dataclass
class LedgerState:
    parts: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    failed: dict[str, dict] = field(default_factory=dict)      # video_id → {"stage", "error", "uri"}

    def pending(self, video_ids, retry_failed: bool = False) -> list[str]:
        """Ids still to do: not done, and not failed unless `retry_failed`."""
        return [v for v in video_ids if v not in self.done and (retry_failed or v not in self.failed)]


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

    def load(self) -> LedgerState:
        """Replay every ledger record in commit order (a later failure never undoes a success)."""
        state = LedgerState()
        for record in sorted(self._records(), key=lambda r: (r.get("committed_at", 0), r["part"])):
            state.parts.add(record["part"])
            for vid in record.get("done", []):
                state.done.add(vid)
                state.failed.pop(vid, None)
            for failure in record.get("failed", []):
                if failure["video_id"] not in state.done:
                    state.failed[failure["video_id"]] = failure
        return state

    def record(self, part: str, done: list[str], failed: list[dict]) -> None:
        """Publish the commit record of `part` — call only after all its files are published."""
        payload = {"part": part, "committed_at": time.time(), "done": done,
                   "failed": [{k: f[k] for k in ("video_id", "uri", "stage", "error")} for f in failed]}
        publish_bytes(json.dumps(payload).encode(), self.url("ledger", f"{part}.json"))

    def collect_garbage(self, state: LedgerState) -> list[str]:
        """Delete data files of parts with no ledger record, and leftover temporaries; return them."""
        removed = []
        for sub in DATA_DIRS:
            for path in self.ls(sub):
                name = path.rsplit("/", 1)[-1]
                if name.startswith(".tmp-") or _part_of(name) not in state.parts:
                    self.fs.rm(path)
                    removed.append(path)
        if removed:
            log.warning("removed %d file(s) of uncommitted parts left by an interrupted run", len(removed))
        return removed

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

    def committed_files(self, sub: str, state: LedgerState | None = None) -> list[str]:
        """Published files of committed parts under `sub` (videos, clips, hdf5, failures), sorted."""
        state = state or self.load()
        return sorted(p for p in self.ls(sub) if _part_of(p.rsplit("/", 1)[-1]) in state.parts
                      and not p.rsplit("/", 1)[-1].startswith("."))

    def _records(self) -> list[dict]:
        records = []
        for path in self.ls("ledger"):
            if path.endswith(".json") and not path.rsplit("/", 1)[-1].startswith("."):
                with self.fs.open(path, "r") as fh:
                    records.append(json.load(fh))
        return records

    def ls(self, sub: str) -> list[str]:
        try:
            self.fs.invalidate_cache()
            return sorted(self.fs.ls(self.path(sub), detail=False))
        except FileNotFoundError:
            return []


def _part_of(filename: str) -> str:
    """`part-abc-00001.parquet` → `part-abc-00001`."""
    return filename.split(".", 1)[0]
