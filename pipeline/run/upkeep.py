"""The upkeep at the end of a run: fold the ledger, compact small parts, keep the search indexes fresh."""
from __future__ import annotations

import dataclasses
import logging
import time

from pipeline import storage
from pipeline.config import Config
from pipeline.errors import LeaseLostError
from pipeline.index.build import refresh_all
from pipeline.run.drain import GracefulStop
from pipeline.store.ledger import Ledger

log = logging.getLogger(__name__)


def finish(ledger: Ledger, config: Config, summary, stop: GracefulStop) -> None:
    """Fold this run's records into the ledger's index, compact small parts (if configured), then extend
    the output's search indexes with the run's videos (pipeline/index/build.py; none: nothing to do).
    All upkeep: the run's videos are committed already, so a failure here is reported (`summary`'s
    `upkeep_error`), not raised. A stop lets the fold finish, and the compaction finish or abandon the
    merge under way (compaction.py); the indexes are then extended by the next run."""
    from pipeline.store.compaction import compact

    start = time.perf_counter()
    try:
        state = ledger.fold()
        if config.run.compact and stop.signal is None:   # a preempted run leaves quickly: the next compacts
            compact(ledger, target_mb=config.run.compact_target_mb, state=state,
                    stop=lambda: stop.signal is not None)
        if stop.signal is None:
            summary.indexes = [dataclasses.asdict(r) for r in refresh_all(ledger)]
    except LeaseLostError:
        raise                                                  # not upkeep: this writer must stop
    except Exception as exc:                                   # noqa: BLE001 - see docstring
        if storage.unreachable():
            raise                                              # the store is gone past the patience: end now
        summary.upkeep_error = f"{type(exc).__name__}: {exc}"
        log.error("folding, compacting or indexing %s failed (%s); the run's videos are committed, the next run "
                  "or `vidfeat compact` tries again", ledger.out, summary.upkeep_error)
    summary.compact_s = time.perf_counter() - start
