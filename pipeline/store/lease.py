"""One writer per output directory: the lease a run or a compaction holds while it writes.

A writer publishes `OUT/.writers/<id>.json` ({id, host, pid, started, heartbeat}), removes the leases of
writers that are gone, then claims the output's next epoch (claims.py), and the claim decides: a writer
refuses, naming the holder, when the writer of the newest claim is another one whose lease is alive; two
writers that start at the same instant both try to create the same next claim exclusively, and the one
whose create fails refuses, naming the one whose create succeeded. Exactly one of them goes on. (Each
refusing on seeing the other's lease, as this module once did, let both refuse.) A daemon thread
refreshes the heartbeat every HEARTBEAT_S seconds; the lease is deleted when the writer ends.

A lease is alive when its heartbeat is younger than STALE_S seconds — except that a lease taken on
this host, in this boot and in this pid namespace, by a process that no longer exists is dead at once,
so a run killed a moment ago can be started again right away. A pid that cannot be seen from another pid
namespace (containers sharing a hostname) is never taken for dead: such a lease waits for STALE_S.
Without a lease, garbage collection at the start of one writer could delete the files another writer
has published but not yet committed.

The heartbeat never revives a lease another writer took: before each beat it reads its lease back, and
when it is gone or not its own the lease is *lost* for good; a lost lease stops the writer before its
next commit (`check`, called by Ledger.check_fence). A storage outage alone never loses the lease: the
beats wait it out (storage.py's patience) and the writer goes on, and when the store answers again the
lease read back and the ledger's fence (a later epoch claimed meanwhile, records.py) decide whether this
writer may go on. An outage longer than STALE_S lets another writer take the output over; this one
then stops at its next commit (LeaseLostError, exit 75): the lease is advisory, what makes a taken-over
writer harmless is the ledger's epoch. A writer ending with an error while the store is failing (past
the patience: StorageError) leaves its lease to go stale rather than wait for the store once more.
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
from pipeline.store.publish import publish_bytes

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_S = 300.0
_held: dict[str, "WriterLease"] = {}          # output URL → the lease this process holds on it


class WriterLease:
    """`with WriterLease(ledger): ...` — hold the output's writer lease (re-entrant within a process)."""

    def __init__(self, ledger):
        self.ledger = ledger
        self.me = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                   **_namespace()}
        self.stop = threading.Event()
        self.nested = False
        self.lost: str | None = None            # why this lease is lost, once it is
        self.beaten = time.time()               # when a heartbeat was last published (an outage: long ago)

    def __enter__(self) -> "WriterLease":
        if self.ledger.out in _held:
            self.nested = True
            return self
        self.ledger.check_reachable()
        self._publish()
        failpoint("lease.published")
        for dead in [lease for lease in self._leases() if lease["id"] != self.me["id"] and not alive(lease)]:
            log.info("removing the writer lease of a writer that is gone (%s)", describe(dead))
            self._delete(dead["id"])
        _held[self.ledger.out] = self
        threading.Thread(target=self._beat, name="vidfeat-lease", daemon=True).start()
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
        try:
            self._delete()
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
        current = self._lease(holder["id"]) or holder
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
        mine = next((lease for lease in self._leases() if lease["id"] == self.me["id"]), None)
        if mine is None:
            self.lost = "another writer removed it as stale"
            log.error("%s: %s; stopping before the next commit", self.ledger.out, self.lost)
            return
        self._publish()
        self.beaten = time.time()

    def _publish(self) -> None:
        publish_bytes(json.dumps({**self.me, "heartbeat": time.time()}).encode(), self._url(self.me["id"]))

    def _delete(self, lease_id: str | None = None) -> None:
        try:
            self.ledger.fs.rm(self.ledger.path(".writers", f"{lease_id or self.me['id']}.json"))
        except FileNotFoundError:
            pass

    def _lease(self, lease_id: str) -> dict | None:
        """The lease `lease_id` as published now; None when it is gone."""
        return self._read(self.ledger.path(".writers", f"{lease_id}.json"))

    def _leases(self) -> list[dict]:
        paths = [p for p in self.ledger.ls(".writers")
                 if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith(".")]
        return [lease for lease in map(self._read, paths) if lease is not None]

    def _read(self, path: str) -> dict | None:
        try:
            return json.loads(self.ledger.fs.cat_file(path))
        except (FileNotFoundError, ValueError):         # withdrawn meanwhile, or a temporary
            return None

    def _url(self, lease_id: str) -> str:
        return self.ledger.url(".writers", f"{lease_id}.json")


def alive(lease: dict) -> bool:
    """A lease whose holder may still write: heartbeat fresh, and its process alive if it provably runs
    where this one does (same host, boot and pid namespace)."""
    if time.time() - float(lease.get("heartbeat", 0)) > STALE_S:
        return False
    if lease.get("host") != socket.gethostname():
        return True
    here = _namespace()
    if here and lease.get("boot") and lease.get("boot") != here.get("boot"):
        return False                                # this host rebooted since: its processes are gone
    if not here or lease.get("pidns") != here.get("pidns"):
        return True                                 # another pid namespace: its pid means nothing here
    try:
        os.kill(int(lease["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespace() -> dict:
    """This process's boot id and pid namespace (Linux); {} where they cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return {"boot": boot, "pidns": os.readlink("/proc/self/ns/pid")}
    except OSError:
        return {}


def describe(lease: dict) -> str:
    beat = f", last heartbeat {time.time() - float(lease['heartbeat']):.0f} s ago" if "heartbeat" in lease else ""
    return f"pid {lease.get('pid')} on {lease.get('host')}, started {time.ctime(float(lease.get('started', 0)))}{beat}"
