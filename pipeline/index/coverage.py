"""Whether a published index covers an output, row by row, judged against the ledger's state.

A row of the index counts when its video is done *with the uri the index recorded*: a retired video is
no longer done, and a video redone from another uri (`--redo-changed`) is done with a new one, so the
old rows of both are hidden (never returned) whatever compaction did to their segments since — the
rows are keyed by what the ledger says of the video, not by the file that held it. A row once hidden is
*tombstoned* for good (retired.py): a video moved from A to B and back to A is done with A again, but
with the features of its third extraction, so its first row must not count again. A done video with
no counting row is *lacking*: the index covers the output when nothing lacks. Keys join video id and uri
with a NUL, which no id may hold (corpus checks refuse it); videos recorded without a uri use "".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.store.ledger_state import LedgerState


@dataclass(frozen=True)
class Coverage:
    """rows: rows in the index; hidden: bool [rows], rows never to return; lacking: ids of done videos
    the index has no row for (Arrow strings); done: videos the output holds."""

    rows: int
    hidden: np.ndarray
    lacking: pa.Array
    done: int

    @property
    def covers(self) -> bool:
        return len(self.lacking) == 0

    def reason(self, kind: str) -> str:
        """One sentence: why the index can (or cannot) answer for the output."""
        if self.covers:
            stale = int(self.hidden.sum())
            return (f"approximate: the {kind} index covers all {self.done:,} committed videos"
                    + (f" ({stale:,} stale rows hidden: retired or redone videos)" if stale else ""))
        return (f"exact: the {kind} index lacks {len(self.lacking):,} of the {self.done:,} committed videos "
                f"(committed after it was built; the next run or `vidfeat index OUT` extends it)")


def done_keys(state: LedgerState) -> pa.Array:
    """The key of every done video of `state` (module doc)."""
    return keys(state.done_ids, state.done_uris)


def keys(ids: pa.Array | pa.ChunkedArray, uris: pa.Array | pa.ChunkedArray) -> pa.Array:
    joined = pc.binary_join_element_wise(ids, pc.fill_null(uris, ""), "\x00")
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def uris_of(state: LedgerState, ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The ledger's uri of each done id in `ids` ("" where it recorded none): what index rows store."""
    at = pc.index_in(ids, value_set=state.done_ids)
    return pc.fill_null(pc.take(pc.fill_null(state.done_uris, ""), at), "")


def coverage(rows: pa.Table, state: LedgerState, tombstones: np.ndarray | None = None) -> Coverage:
    """The coverage of an index whose `rows` hold video_id and uri, against `state`; `tombstones`: row
    numbers that never count again."""
    done = done_keys(state)
    mine = keys(rows.column("video_id"), rows.column("uri"))
    dead = np.zeros(rows.num_rows, bool)
    if tombstones is not None:
        dead[np.asarray(tombstones, np.int64)] = True
    hidden = np.asarray(pc.invert(pc.is_in(mine, value_set=done)).to_numpy(zero_copy_only=False), bool) | dead
    counting = mine.filter(pa.array(~dead)) if dead.any() else mine
    lacking = state.done_ids.filter(pc.invert(pc.is_in(done, value_set=counting)))
    return Coverage(rows.num_rows, hidden, lacking, len(state.done_ids))
