"""One writer per output directory: the lease a run or a compaction holds while it writes.

A writer publishes `OUT/.writers/<id>.json` ({id, host, pid, started, heartbeat}), removes the leases of
writers that are gone (liveness.py: by the store's own timestamps, and the holder's process where it
provably runs here), then claims the output's next epoch (claims.py), and the claim decides: a writer
refuses, naming the holder, when the writer of the newest claim is another one whose lease is alive; two
writers that start at the same instant both try to create the same next claim exclusively, and the one
whose create fails refuses, naming the one whose create succeeded. Exactly one of them goes on. (Each
refusing on seeing the other's lease, as this module once did, let both refuse.) A daemon thread
refreshes the heartbeat every HEARTBEAT_S seconds.

A lease ends with a marker: whoever ends it — its writer on the way out, or a writer that finds it dead
— first publishes `.writers/<id>.released`, then deletes `<id>.json`. A lease file with a marker is gone
for every reader, so nothing can bring a lease back: not a heartbeat in flight when it was removed, nor
an upload abandoned at its deadline that lands later (storage.py). The writer stops its heartbeat and
waits for a beat in flight (one deadline at most) before it ends its lease. A writer that holds the
lease removes lease files with a marker, and markers and temporaries older than KEEP_S by the store's
clock.

The heartbeat never revives a lease another writer took: before each beat it reads its lease back, and
when it is gone, marked or not its own the lease is *lost* for good; a lost lease stops the writer before
its next commit (`check`, called by Ledger.check_fence). A storage outage alone never loses the lease:
the beats wait it out (storage.py's patience) and the writer goes on, and when the store answers again
the lease read back and the ledger's fence (a later epoch claimed meanwhile, records.py) decide whether
this writer may go on. An outage longer than STALE_S lets another writer take the output over; this one
then stops at its next commit (LeaseLostError, exit 75): the lease is advisory, what makes a taken-over
writer harmless is the ledger's epoch. A writer ending with an error while the store is failing (past
the patience: StorageError) leaves its lease to go stale rather than wait for the store once more.
Without a lease, garbage collection at the start of one writer could delete the files another writer
has published but not yet committed.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from pipeline import storage
from pipeline.errors import ConfigError, LeaseLostError
from pipeline.faults import failpoint
from pipeline.store.liveness import STALE_S, age, alive, describe, modified, namespace
from pipeline.store.publish import publish_bytes

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
KEEP_S = 86400.0                              # markers and temporaries kept this long (store time)
RELEASED = ".released"
_held: dict[str, "WriterLease"] = {}          # output URL → the lease this process holds on it


class WriterLease:
    """`with WriterLease(ledger): ...` — hold the output's writer lease (re-entrant within a process)."""

    def __init__(self, ledger):
        self.ledger = ledger
        self.me = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                   **namespace()}
        self.stop = threading.Event()
        self.nested = False
        self.lost: str | None = None            # why this lease is lost, once it is
        self.beaten = time.time()               # when a heartbeat was last published (an outage: long ago)
        self.beats: threading.Thread | None = None

    def __enter__(self) -> "WriterLease":
        if self.ledger.out in _held:
            self.nested = True
            return self
        self.ledger.check_reachable()
        self._publish()
        failpoint("lease.published")
        entries = self._entries()
        for dead in [lease for lease in self._leases(entries) if lease["id"] != self.me["id"] and not alive(lease)]:
            log.info("removing the writer lease of a writer that is gone (%s)", describe(dead))
            self._end(dead["id"])
        _held[self.ledger.out] = self
        self._tidy(entries)
        self.beats = threading.Thread(target=self._beat, name="vidfeat-lease", daemon=True)
        self.beats.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.nested:
            return
        self.stop.set()
        _held.pop(self.ledger.out, None)
        if exc is not None and storage.failing():          # ending with an error: no waiting for the store
            log.warning("the writer lease %s is left to go stale (%.0f s; at once for a run on this host): the "
                        "store is not answering", self._url(self.me["id"]), STALE_S)
            return
        self.beats.join(storage.deadline_s())    # a beat in flight ends first (one landing later is marked)
        try:
            self._end(self.me["id"])
        except Exception as error:                  # noqa: BLE001 - must not hide why the writer is ending
            log.warning("could not remove the writer lease %s (%s: %s); it goes stale in %.0f s",
                        self._url(self.me["id"]), type(error).__name__, error, STALE_S)

    def refuse_if_writing(self, holder: dict | None) -> None:
        """Refuse (ConfigError) when `holder`, the lease named by the output's newest claim, is another
        writer's and alive: that writer is writing the output."""
        if holder and holder.get("id") != self.me["id"]:
            current = self._lease(holder["id"])
            if current is not None and alive(current):
                raise self.refusal(current)

    def refusal(self, holder: dict, how: str = "") -> ConfigError:
        """The refusal of a writer that lets `holder` (a lease) write the output: who, and what to do."""
        current = self._lease(holder["id"]) or {**holder, "age": age(holder, None, None)}
        return ConfigError(f"{self.ledger.out} is being written by another run or compaction{how} "
                           f"({describe(current)}); wait for it to end, then run again. If it is gone, delete "
                           f"{self._url(holder['id'])}")

    def check(self) -> None:
        """Raise LeaseLostError when this lease is lost (another writer removed it); an outage alone never
        loses it (module doc)."""
        if self.nested:
            return _held[self.ledger.out].check() if self.ledger.out in _held else None
        if self.lost:
            raise LeaseLostError(f"{self.ledger.out}: this writer lost its lease ({self.lost}); committed work is "
                                 f"safe, and the same command resumes")

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S) and not self.lost:
            try:
                self._beat_once()
            except Exception as exc:                    # noqa: BLE001 - any storage error: try again later
                log.warning("could not refresh the writer lease of %s: %s: %s", self.ledger.out,
                            type(exc).__name__, exc)

    def _beat_once(self) -> None:
        """Republish the heartbeat, unless the lease is no longer ours (then it is lost, not revived)."""
        if not any(lease["id"] == self.me["id"] for lease in self._leases(self._entries())):
            self.lost = "another writer removed it as stale"
            log.error("%s: %s; stopping before the next commit", self.ledger.out, self.lost)
            return
        self._publish()
        self.beaten = time.time()

    def _publish(self) -> None:
        publish_bytes(json.dumps({**self.me, "heartbeat": time.time()}).encode(), self._url(self.me["id"]))

    def _end(self, lease_id: str) -> None:
        """End the lease `lease_id`: its marker first, then its file (module doc)."""
        publish_bytes(b"", self._url(lease_id, RELEASED))
        self._delete(f"{lease_id}.json")

    def _delete(self, name: str) -> None:
        try:
            self.ledger.fs.rm(self.ledger.path(".writers", name))
        except FileNotFoundError:
            pass

    def _entries(self) -> dict[str, dict]:
        """`.writers/`, listed: name → the store's entry (its size, its time)."""
        return {info["name"].rsplit("/", 1)[-1]: info for info in self.ledger.ls(".writers", detail=True)}

    def _leases(self, entries: dict[str, dict]) -> list[dict]:
        """The leases among `entries` that no marker ended, each with its "age" by the store's clock."""
        now = modified(entries.get(f"{self.me['id']}.json"))
        leases = []
        for name, info in entries.items():
            if not name.endswith(".json") or name.startswith(".") or name[:-5] + RELEASED in entries:
                continue
            try:
                lease = json.loads(self.ledger.fs.cat_file(info["name"]))
            except (FileNotFoundError, ValueError):     # withdrawn meanwhile, or a temporary
                continue
            leases.append({**lease, "age": age(lease, modified(info), now)})
        return leases

    def _lease(self, lease_id: str) -> dict | None:
        """The lease `lease_id` as published now (with its age); None when it is gone or ended."""
        return next((lease for lease in self._leases(self._entries()) if lease["id"] == lease_id), None)

    def _tidy(self, entries: dict[str, dict]) -> None:
        """Remove the lease files that a marker ended, and markers and temporaries older than KEEP_S."""
        now = modified(entries.get(f"{self.me['id']}.json"))
        for name, info in sorted(entries.items(), key=lambda item: item[0].endswith(RELEASED)):
            ended = name.endswith(".json") and name[:-5] + RELEASED in entries
            old = now is not None and (name.startswith(".") or name.endswith(RELEASED)) and \
                now - (modified(info) or now) > KEEP_S
            if ended or old:
                self._delete(name)

    def _url(self, lease_id: str, suffix: str = ".json") -> str:
        return self.ledger.url(".writers", f"{lease_id}{suffix}")
