"""Writer epochs: who claimed the output when, what each claimant accepted, and which records count.

Every writer (a run, a compaction) starts by claiming the next epoch: it creates `ledger/claims/<E>.json`
exclusively (the fence: from this instant an older writer's checks fail) — unless the writer named by
claim E-1 is still writing (its lease alive: it refuses), and the create decides between two writers
that start together (the loser refuses, naming the winner; lease.py) — then loads the state, then
publishes `ledger/claims/<E>-accepted.json`, the names of the pending records it found and kept, then
its first index, then folds, and only then deletes anything. Every record carries its writer's epoch.

A record counts when the index a load starts from holds it; otherwise when no writer claimed after its
writer (its epoch + 1 is beyond the newest claim); otherwise when the first claimant after its writer
that said what it accepted accepted it, or when none said (no accepted file: those claimants deleted
nothing, so the record's files are whole). A record whose next claim is gone (pruned: claims older than the one before the newest are
removed) is older than two takeovers and counts only if an index holds it. Loads, rebuilds and every
reader apply the same rule, so a state rebuilt from the records is the state the index holds.
"""
from __future__ import annotations

import contextlib
import json
import time

from pipeline import storage
from pipeline.store import nfs, records
from pipeline.errors import DamagedOutputError, LeaseLostError
from pipeline.faults import failpoint
from pipeline.store.publish import publish_bytes

ACCEPTED = "-accepted"


class Claims:
    """The claims under `ledger/claims/` of `ledger`, listed once (`exclude`: a claim to leave out, the
    claimant's own while it loads)."""

    def __init__(self, ledger, exclude: int | None = None):
        self.ledger = ledger
        self.claimed: dict[int, str] = {}
        self.accepted_files: dict[int, str] = {}
        for path in ledger.ls("ledger/claims"):
            stem = path.rsplit("/", 1)[-1].removesuffix(".json")
            kind = self.accepted_files if stem.endswith(ACCEPTED) else self.claimed
            number = stem.removesuffix(ACCEPTED)
            if number.isdigit() and int(number) != exclude:
                kind[int(number)] = path
        self._read: dict[int, frozenset[str]] = {}

    @property
    def newest(self) -> int:
        return max(self.claimed, default=0)

    def counts(self, record: dict, held) -> bool:
        """Whether `record` counts in a state whose index holds the records `held` (module doc)."""
        if record["part"] in held:
            return True
        later = records.epoch_of(record) + 1
        if later > self.newest:
            return True
        if later not in self.claimed:
            return False
        for epoch in sorted(e for e in self.claimed if e >= later):    # the first claimant that said
            accepted = self.accepted(epoch)
            if accepted is not None:
                return record["part"] in accepted
        return True

    def accepted(self, epoch: int) -> frozenset[str] | None:
        """The records claimant `epoch` accepted; None when it never said."""
        if epoch not in self.accepted_files:
            return None
        if epoch not in self._read:
            try:
                names = json.loads(self.ledger.fs.cat_file(self.accepted_files[epoch]))["accepted"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DamagedOutputError(f"ledger claim {self.accepted_files[epoch]} cannot be read ({exc}); "
                                         f"nothing was deleted") from None
            self._read[epoch] = frozenset(names)
        return self._read[epoch]


def claim(ledger, epoch: int, lease=None) -> None:
    """Create claim `epoch` exclusively, the create deciding between writers that start together: with a
    `lease` (lease.py), refuse (ConfigError, naming it) when the writer of claim `epoch - 1` is still
    writing, or when another writer created claim `epoch` first; without one, LeaseLostError then."""
    if storage.is_local(ledger.fs):
        nfs.warn_if_inexact(ledger.root)             # an NFS mount's cached listings blur the fence
    if lease is not None:
        lease.refuse_if_writing(holder(ledger, epoch - 1))
    failpoint("claim.create")
    body = {"epoch": epoch, "claimed_at": time.time(), "lease": getattr(lease, "me", None)}
    try:
        publish_bytes(json.dumps(body).encode(), ledger.url("ledger", "claims", records.claim_name(epoch)),
                      exclusive=True)
    except FileExistsError:
        winner = holder(ledger, epoch)
        if lease is not None and winner:
            raise lease.refusal(winner, ", which claimed it at the same instant as this one") from None
        raise LeaseLostError(f"{ledger.out}: another writer started at the same moment (epoch {epoch})") from None


def holder(ledger, epoch: int) -> dict | None:
    """The lease named by claim `epoch` (its writer); None when there is no such claim or it names none."""
    try:
        body = json.loads(ledger.fs.cat_file(ledger.path("ledger", "claims", records.claim_name(epoch))))
    except (FileNotFoundError, ValueError):
        return None
    lease = body.get("lease") if isinstance(body, dict) else None
    return lease if isinstance(lease, dict) and "id" in lease else None


def accept(ledger, epoch: int, names) -> None:
    """Publish what claimant `epoch` accepted (the pending records it found and kept)."""
    body = json.dumps({"epoch": epoch, "accepted": sorted(names)}).encode()
    publish_bytes(body, ledger.url("ledger", "claims", f"{epoch:08d}{ACCEPTED}.json"), exclusive=True)


def prune(ledger, epoch: int) -> None:
    """Remove the claims of epochs before `epoch - 1` (their records are archived or set aside)."""
    for path in ledger.ls("ledger/claims"):
        number = path.rsplit("/", 1)[-1].removesuffix(".json").removesuffix(ACCEPTED)
        if number.isdigit() and int(number) < epoch - 1:
            ledger.fs.rm(path)


@contextlib.contextmanager
def overtaken_is_lost(ledger):
    """Around a writer's publish: its staged temporary gone (FileNotFoundError) means a newer writer claimed
    the output and swept it (sweep.py) — this writer lost the output (LeaseLostError), no I/O error."""
    try:
        yield
    except FileNotFoundError:
        ledger.check_fence()
        raise
