"""`vidfeat status`: done / failed / pending of an output directory, from its ledger."""
from __future__ import annotations

import json

import pyarrow.compute as pc

from pipeline.corpus import load_corpus
from pipeline.errors import VidfeatError
from pipeline.store.ledger import Ledger


def last_run(ledger: Ledger) -> dict | None:
    """The newest run record (runs/<run_id>.json; run ids sort by start time)."""
    runs = [p for p in ledger.ls("runs") if p.endswith(".json")]
    if not runs:
        return None
    with ledger.fs.open(sorted(runs)[-1], "r") as fh:
        return json.load(fh)


def status(out: str, source: str | None = None) -> dict:
    """Counts of done / failed / pending videos (pending needs the corpus: `source` or the last run's)."""
    ledger = Ledger(out)
    state = ledger.load()
    run = last_run(ledger)
    source = source or (run or {}).get("source")
    pending, changed = None, None
    if source:
        try:
            corpus = load_corpus(source)
            pending = pc.sum(state.todo_mask(corpus.ids)).as_py() or 0
            changed = state.changed(corpus.table)
        except (VidfeatError, OSError):
            pending = None
    failures = state.failures.sort_by("video_id")
    return {"out": out, "source": source, "done": len(state.done_ids), "failed": failures.num_rows,
            "pending": pending, "parts": len(state.segments),
            "changed": None if changed is None else changed.num_rows,      # committed, manifest uri changed
            "changed_videos": [] if changed is None else changed.slice(0, 100).to_pylist(),
            "failures": failures.to_pylist(),
            "last_run": (run or {}).get("summary")}
