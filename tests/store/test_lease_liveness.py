"""The writer lease under the interleavings a store, a network and a clock can produce (issue #27 item 3,
points 2 and 8): a lease once ended never comes back — not through a heartbeat in flight when its writer
ended, nor one that raced another writer's removal, nor an upload abandoned at its deadline landing later —
and a lease's age is read from the store's own clock, so hosts whose clocks differ, or that share a name,
never take a live writer for dead."""
from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from pipeline.errors import ConfigError
from pipeline.store import lease as lease_mod
from pipeline.store.lease import WriterLease
from pipeline.store.ledger import Ledger
from pipeline.store.liveness import STALE_S, alive, namespace


def leases_seen(out: str) -> list[str]:
    """The ids of the leases a writer starting now would see in `out`."""
    viewer = WriterLease(Ledger(out))
    return sorted(lease["id"] for lease in viewer._leases(viewer._entries()))


class HeldBeat:
    """The lease's next publish waits until `release()`, then lands: a heartbeat in flight."""

    def __init__(self, held: WriterLease):
        self.go, self.waiting, self.landed = threading.Event(), threading.Event(), threading.Event()
        self.publish = held._publish
        held._publish = self.held

    def held(self) -> None:
        self.waiting.set()
        self.go.wait()
        self.publish()
        self.landed.set()

    def release(self) -> None:
        self.go.set()
        assert self.landed.wait(30), "the held heartbeat never landed"


def test_a_heartbeat_landing_after_its_writer_ended_does_not_bring_the_lease_back(tmp_path, monkeypatch):
    """The beat is in flight when the writer ends; its exit waits one deadline for it, ends the lease and
    goes; the beat lands after. The next writer (a `vidfeat compact` right after the run) is not refused."""
    monkeypatch.setenv("VIDFEAT_STORAGE_DEADLINE_S", "0.1")
    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 0.01)
    out = str(tmp_path / "out")
    with WriterLease(Ledger(out)) as held:
        beat = HeldBeat(held)
        assert beat.waiting.wait(30)                              # a beat is in flight
    beat.release()                                                # and lands after the lease ended
    assert os.path.exists(os.path.join(out, ".writers", f"{held.me['id']}.json"))      # it did land
    assert leases_seen(out) == []
    with WriterLease(Ledger(out)) as nxt:
        assert leases_seen(out) == [nxt.me["id"]]
    assert not [n for n in os.listdir(os.path.join(out, ".writers")) if n.endswith(".json")]


def test_a_heartbeat_that_races_another_writers_removal_does_not_revive_the_lease(tmp_path):
    """A beat reads its lease back (there), another writer then ends the lease as stale, the beat
    publishes: the lease is still gone for everyone, and the writer learns at its next beat it lost it."""
    out = str(tmp_path / "out")
    with WriterLease(Ledger(out)) as held:
        beat = HeldBeat(held)
        racing = threading.Thread(target=held._beat_once)
        racing.start()
        assert beat.waiting.wait(30)                              # read back, about to publish
        WriterLease(Ledger(out))._end(held.me["id"])              # what a takeover does to a stale lease
        beat.release()
        racing.join()
        assert os.path.exists(os.path.join(out, ".writers", f"{held.me['id']}.json"))  # published again
        assert leases_seen(out) == [] and held.lost is None
        held._beat_once()
        assert held.lost == "another writer removed it as stale"


def test_a_writer_that_ends_joins_the_beat_in_flight_before_it_ends_its_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 0.01)
    out = str(tmp_path / "out")
    ended = []
    with WriterLease(Ledger(out)) as held:
        beat = HeldBeat(held)
        assert beat.waiting.wait(30)
        real_end = held._end
        held._end = lambda lease_id: (ended.append(beat.landed.is_set()), real_end(lease_id))
        threading.Timer(0.2, beat.go.set).start()                 # the beat ends while the exit waits
    assert ended == [True]


def assert_refused(out: str, match: str) -> None:
    """A writer starting now keeps the foreign lease (it is not taken for dead) and refuses to claim the
    output while that lease's writer holds the newest claim (claims.claim asks `refuse_if_writing`)."""
    with WriterLease(Ledger(out)) as held:
        assert "f" * 32 in leases_seen(out)
        with pytest.raises(ConfigError, match=match):
            held.refuse_if_writing({"id": "f" * 32})


def foreign_lease(out: str, **fields) -> str:
    """A lease of another writer, as its host wrote it; its path."""
    folder = os.path.join(out, ".writers")
    os.makedirs(folder, exist_ok=True)
    lease = {"id": "f" * 32, "host": "another-host", "pid": 4242, "started": time.time(),
             "heartbeat": time.time(), **fields}
    path = os.path.join(folder, f"{lease['id']}.json")
    with open(path, "w") as fh:
        json.dump(lease, fh)
    return path


def test_a_live_writer_whose_clock_is_an_hour_behind_is_not_taken_for_dead(tmp_path):
    out = str(tmp_path / "out")
    foreign_lease(out, heartbeat=time.time() - 3600)              # its clock is an hour behind, its beat fresh
    assert_refused(out, "another-host")


def test_a_writer_whose_clock_is_ahead_is_stale_when_the_store_says_so(tmp_path):
    out = str(tmp_path / "out")
    path = foreign_lease(out, heartbeat=time.time() + 3600)       # an hour ahead: "fresh" for an hour
    os.utime(path, (time.time() - 2 * STALE_S, time.time() - 2 * STALE_S))   # the store's stamp: stale
    with WriterLease(Ledger(out)) as held:
        assert leases_seen(out) == [held.me["id"]]


def test_this_hosts_clock_set_apart_from_the_stores_changes_nothing(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    foreign_lease(out)
    real = time.time
    for offset in (-3600, 3600):
        monkeypatch.setattr(time, "time", lambda: real() + offset)
        assert_refused(out, "another-host")


def test_a_host_of_the_same_name_in_another_boot_is_not_taken_for_dead(tmp_path):
    """Cloned images and pods share a hostname: a lease from another boot waits for its staleness."""
    here = namespace()
    assert here, "Linux exposes the boot id and pid namespace"
    out = str(tmp_path / "out")
    foreign_lease(out, host=socket.gethostname(), pid=2 ** 22 + 12345, **{**here, "boot": "another-boot"})
    assert_refused(out, socket.gethostname())


def test_a_pid_is_taken_for_dead_at_once_only_in_this_pid_namespace_and_boot():
    here = namespace()
    gone = 2 ** 22 + 12345                                        # above pid_max: no such process
    base = {"host": socket.gethostname(), "pid": gone, "age": 0.0}
    assert not alive({**base, **here})
    assert alive({**base, **here, "pidns": "pid:[1]"})            # another container sharing the hostname
    assert alive({**base})                                        # a lease that does not say: wait for it
    assert alive({**base, **here, "boot": "another-boot"})        # a clone, or a pod: wait for it
    assert not alive({**base, **here, "pidns": "pid:[1]", "age": STALE_S + 1})
