"""What a dead writer staged outside the data folders, swept by the next writer after its claim.

A publish on local disk stages `.tmp-<name>-<random>` next to its destination and removes it whatever
happens (publish.py), so only a killed process leaves one; object stores stage nothing (one upload).
Data folders' temporaries go with the garbage of uncommitted parts (segments.py). Here: the ledger's
folders, `runs/` and the output's root, which only the writer holding the newest claim publishes to,
are swept at once; `ledger/claims/` and `.writers/`, where a writer that is starting publishes too, of
temporaries older than a lease's staleness (lease.STALE_S), judged by the store's own clock (the age
relative to this writer's claim), so a starting writer's publish is never cut short. The local
scratch folders of writers on this host that are gone (`<tmp>/vidfeat-part-<pid>-*`,
`<tmp>/vidfeat-compact-<pid>-*`, scratch.py) are removed too.
"""
from __future__ import annotations

import logging
import tempfile

from pipeline import scratch, storage
from pipeline.store import records
from pipeline.store.lease import STALE_S

log = logging.getLogger(__name__)

WRITER_ONLY = ("", "runs", "ledger", "ledger/index", "ledger/records", "ledger/fenced")
SHARED = ("ledger/claims", ".writers")
SCRATCH = ("vidfeat-part-", "vidfeat-compact-")


def sweep(ledger) -> list[str]:
    """Remove what dead writers staged (module doc); call after the claim (`ledger.epoch` set) and a
    fence check. The paths removed."""
    removed = [p for kind in SCRATCH for p in scratch.sweep(tempfile.gettempdir(), kind)]
    if storage.is_local(ledger.fs) and ledger.epoch is not None:
        now = ledger.fs.info(ledger.path("ledger", "claims", records.claim_name(ledger.epoch)))["mtime"]
        found = [e for sub in WRITER_ONLY for e in _temporaries(ledger, sub)]
        found += [e for sub in SHARED for e in _temporaries(ledger, sub) if now - e["mtime"] > STALE_S]
        for entry in found:
            ledger.fs.rm(entry["name"])
        removed += [e["name"] for e in found]
    if removed:
        log.warning("removed %d temporary file(s) or folder(s) of writers that are gone: %s", len(removed),
                    ", ".join(removed[:5]))
    return removed


def _temporaries(ledger, sub: str) -> list[dict]:
    return [e for e in ledger.ls(sub, detail=True)
            if e["type"] == "file" and e["name"].rsplit("/", 1)[-1].startswith(".tmp-")]
