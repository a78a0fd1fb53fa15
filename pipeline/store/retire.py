"""Retiring committed videos: their rows leave the output atomically, and they are no longer done.

`vidfeat extract --redo-changed` re-extracts the committed videos whose uri in the manifest is not the
one they were made from (manifest drift: the same id now names another file). Before the run streams,
each live segment holding such videos is rewritten without their rows, through compaction's own steps
(compact.merge_group): the rewritten files are published staged, then one compaction record replaces
the segment by its rewrite and names the `retired` ids (no longer done), then the old files go. Readers
see a retired video's old row until that record and no row after it; the run then extracts it again
like any video to do, so afterwards it appears exactly once, with its new uri. A kill anywhere leaves
either the old segment (the video still done, retired again by the next run) or the rewrite.
"""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.store.compaction import Listing, merge_group, merged_name
from pipeline.store.ledger import Ledger
from pipeline.store.ledger_state import LedgerState

log = logging.getLogger(__name__)


def retire(ledger: Ledger, state: LedgerState, ids: list[str]) -> LedgerState:
    """Retire the done videos `ids` of `ledger` (a writer that has claimed); returns the new state."""
    files = Listing(ledger, state)
    wanted = pa.array(sorted(set(ids)), pa.string())
    for segment, held in holders(ledger, files, wanted).items():
        merge_group(ledger, files, [segment], merged_name(segment), drop=frozenset(held), kind="retire")
    state = ledger.fold()
    log.warning("%s: retired %d committed video(s) whose uri changed; they are extracted again", ledger.out,
                len(wanted))
    return state


def holders(ledger: Ledger, files: Listing, wanted: pa.Array) -> dict[str, list[str]]:
    """Live segment → the `wanted` ids its videos/ file holds (one column read per segment)."""
    found = {}
    for segment in files.live:
        if segment not in files.files["videos"]:
            continue
        with ledger.fs.open(files.files["videos"][segment][0], "rb") as fh:
            ids = pq.read_table(fh, columns=["video_id"]).column("video_id")
        held = ids.filter(pc.is_in(ids, value_set=wanted)).to_pylist()
        if held:
            found[segment] = held
    return found
