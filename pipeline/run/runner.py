"""The story of one run: corpus in, committed features out.

1. Read the corpus (as columns); load the output's ledger (its index plus the records not yet folded:
   a few requests, however many parts exist); refuse a different fingerprint; delete files of
   uncommitted parts; keep only the videos still to do.
2. Start (or join) Ray and build the Ray Data graph (feed.py): read tasks of a few videos each, fused
   with decoding (CPU tasks yielding one clip at a time) → inference (an actor pool, one GPU per actor).
3. Stream the results in the driver: `VideoCollector` assembles each video when its last clip is in,
   `PartWriter` buffers finished videos and failures and commits them in parts (data first, ledger last).
4. Fold the ledger's records into its index, compact small parts into large files, extend the output's
   search index (if it has one) with the new videos (upkeep.py), and record the run:
   videos ok / failed / skipped, clips, hours of video, time per stage, where each stage ran.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline import storage
from pipeline.run import results
from pipeline.run.cluster import abandon_ray, check_reachable, cluster_failure, connect_ray, embedded, shutdown_ray
from pipeline.run.collector import VideoCollector
from pipeline.run.drain import GracefulStop, pulled
from pipeline.run.metrics import RunMetrics, live_metrics
from pipeline.store.claims import overtaken_is_lost
from pipeline.store.commit import PartWriter, provenance, write_part
from pipeline.config import Config
from pipeline.corpus import Corpus, load_corpus
from pipeline.errors import ClusterLostError, ConfigError, VidfeatError
from pipeline.faults import failpoint
from pipeline.run.listener import LoggingListener, RunListener
from pipeline.run.upkeep import finish as _finish
from pipeline.run.feed import build_dataset, inference_resources
from pipeline.store.lease import WriterLease
from pipeline.store.ledger import Ledger
from pipeline.store.publish import publish_bytes

log = logging.getLogger(__name__)

__all__ = ["run_extract", "RunSummary", "FailureRateExceeded", "connect_ray", "VideoCollector", "PartWriter",
           "write_part", "provenance", "build_dataset", "inference_resources"]


class FailureRateExceeded(VidfeatError):
    """More videos failed than --max-failure-rate allows."""


@dataclass
class RunSummary:
    run_id: str
    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    clips: int = 0
    video_hours: float = 0.0
    wall_s: float = 0.0
    decode_s: float = 0.0
    infer_s: float = 0.0
    commit_s: float = 0.0
    bytes_written: int = 0                                  # Parquet and HDF5 bytes committed
    compact_s: float = 0.0                                  # folding the ledger and compacting, at the end
    upkeep_error: str | None = None                         # why folding or compacting failed, if it did
    indexes: list = field(default_factory=list)            # what the output's indexes became (pipeline/index)
    stopped: str | None = None                              # why the run stopped early (--max-failure-rate)
    interrupted: str | None = None                          # the signal that stopped it gracefully (drain.py)
    changed: int = 0                                        # committed videos whose manifest uri changed
    changed_videos: list[dict] = field(default_factory=list)   # the first 100: video_id, uri, committed_uri
    redone_changed: bool = False                            # ... retired and extracted again (--redo-changed)
    first_commit_s: float | None = None                     # seconds from the start to the first commit
    devices: list[str] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)      # the Ray Data plan as executed
    decode_nodes: dict[str, int] = field(default_factory=dict)   # Ray node id → clips decoded there
    infer_nodes: dict[str, int] = field(default_factory=dict)    # Ray node id → clips inferred there
    failures: list[dict] = field(default_factory=list)      # the first 100

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["video_s_per_s"] = self.video_hours * 3600 / self.wall_s if self.wall_s else 0.0
        return d


def run_extract(source: str, out: str, config: Config, *, listener: RunListener | None = None,
                progress: bool = True) -> RunSummary:
    """Extract features for every video of `source` not yet done in `out`. See module doc.

    `listener` hears the run's progress (the CLI passes the console's); without one, progress is logged
    through `logging` now and then, or not at all with `progress=False`."""
    listener = listener or (LoggingListener() if progress else RunListener())
    started = time.time()
    summary = RunSummary(run_id=time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    sha, fingerprint = _fingerprint(config)
    corpus = load_corpus(source)
    check_reachable(config.run.address)              # a cluster that cannot be reached: before the output
    ledger, stop = Ledger(out), GracefulStop(config.run.drain_s, listener.stopping)
    with stop.handling(), WriterLease(ledger) as lease:        # a signal, in any phase: a graceful stop (drain.py)
        todo = _todo(ledger, lease, corpus, config, fingerprint, summary)
        streams = len(todo) > 0 and stop.signal is None
        if streams:
            pin = (fingerprint, config.feature_fields())
            writer = PartWriter(ledger, summary, provenance(config, sha, fingerprint, summary.run_id),
                                commit_every=config.run.commit_every, started=started, pin=pin)
            _stream_until_stopped(todo, config, writer, summary, listener, stop)
        if streams or stop.signal is None:          # nothing to extract: the upkeep an earlier run failed
            _finish(ledger, config, summary, stop)
        failpoint("run.record")
        summary.interrupted, summary.wall_s = stop.name, time.time() - started
        record = {"source": source, "config": config.to_dict(), "summary": summary.to_dict()}
        with overtaken_is_lost(ledger):
            publish_bytes(json.dumps(record, indent=2).encode(), ledger.url("runs", f"{summary.run_id}.json"))
    if summary.stopped:
        raise FailureRateExceeded(summary.stopped)
    return summary


def _todo(ledger: Ledger, lease: WriterLease, corpus: Corpus, config: Config, fingerprint: str,
          summary: RunSummary) -> Corpus:
    """The videos of `corpus` still to do in `ledger`'s output, after what a writer does first: claim the
    output (ledger.claim: the state with certainty, records a killed run left unfolded folded), check the
    fingerprint, delete files of uncommitted parts."""
    state = ledger.claim(lease)
    ledger.check_fingerprint(fingerprint)
    ledger.collect_garbage(state)
    state = _drift(ledger, state, corpus, config, summary)
    todo = corpus.select(state.todo_mask(corpus.ids, config.run.retry_failed, config.run.retry_transient))
    summary.total, summary.skipped = len(corpus), len(corpus) - len(todo)
    log.info("%d videos in the corpus, %d already done or failed, %d to do", len(corpus), summary.skipped, len(todo))
    return todo


def _drift(ledger: Ledger, state, corpus: Corpus, config: Config, summary: RunSummary):
    """Count (and list) committed videos whose uri in the manifest changed; with `run.redo_changed`,
    retire them (retire.py) so that this run extracts them again. Returns the state to go on from."""
    changed = state.changed(corpus.table)
    summary.changed, summary.changed_videos = changed.num_rows, changed.slice(0, 100).to_pylist()
    if not changed.num_rows:
        return state
    if not config.run.redo_changed:
        log.warning("%d committed video(s) have another uri in the manifest than the one they were made from; "
                    "they keep their features (--redo-changed extracts them again)", changed.num_rows)
        return state
    from pipeline.index.retired import tombstone_videos
    from pipeline.store.retire import retire

    summary.redone_changed = True
    ids = changed.column("video_id").to_pylist()
    tombstone_videos(ledger, ids)        # first: their index rows never count again, even from the same uri
    return retire(ledger, state, ids)


def _fingerprint(config: Config) -> tuple[str, str]:
    """(checkpoint sha256, feature fingerprint); a run needs a checkpoint (or "random")."""
    from pipeline.model import check_checkpoint, checkpoint_sha256, get_preset

    if config.model.checkpoint is None:
        p = get_preset(config.model.preset)
        raise ConfigError(f"no checkpoint given: pass --checkpoint PATH|URL (preset {p.name} expects "
                          f"{p.checkpoint_file or 'a checkpoint'}) or --checkpoint random for random weights")
    m = config.model                          # the strict load the actors will do, before anything is written
    _check_batch(config)
    check_checkpoint(m.checkpoint, preset=m.preset, seed=m.seed, fused_attn=m.fused_attn,
                     num_frames=config.sampling.num_frames, img_size=config.preprocess.size)
    sha = checkpoint_sha256(m.checkpoint, seed=m.seed, preset=m.preset)
    return sha, config.fingerprint(sha)


def _check_batch(config: Config) -> None:
    """Refuse a batch the fused attention kernels cannot take in one forward (pipeline/model/limits.py)."""
    from pipeline.model import get_preset
    from pipeline.model.limits import batch_problem

    problem = batch_problem(config.run.batch_size, config.model.upload_chunk, config.preprocess.size,
                            get_preset(config.model.preset).patch_size, config.preprocess.crops)
    if problem:
        raise ConfigError(problem)


def _stream_until_stopped(todo: Corpus, config: Config, writer: PartWriter, summary: RunSummary,
                          listener: RunListener, stop: GracefulStop) -> None:
    """`_stream`, where a stop for the failure rate is recorded in the summary (the run is then folded
    and recorded like any other) instead of raised."""
    try:
        _stream(todo, config, writer, summary, listener, stop)
    except FailureRateExceeded as exc:
        summary.stopped = str(exc)


def _stream(todo: Corpus, config: Config, writer: PartWriter, summary: RunSummary, listener: RunListener,
            stop: GracefulStop) -> None:
    """Run the Ray Data graph over `todo` and commit results as they come, until `stop` is asked."""
    run = config.run
    started_ray = connect_ray(run.address, run.metrics_port)
    try:
        failpoint("ray.started")
        if stop.signal is not None:                # it came while Ray started: nothing to stream
            started_ray = started_ray and abandon_ray()
            return
        listener.started(len(todo), summary.total, writer.ledger.out)
        ds = build_dataset(todo, config)
        gc.freeze()                         # what exists now (torch, Ray, the corpus) lives for the run:
                                            # Python's garbage collector stops walking it (measured: -30%)
        served = run.metrics_port if started_ray and embedded(run.address) else 0
        with live_metrics(ds, summary, served, run.metrics_linger_s) as metrics:
            _consume(ds, todo, config, writer, summary, listener, metrics, stop)
        if stop.signal is not None:                # leave now: Ray's executor may still be mid-stream
            started_ray = started_ray and abandon_ray()
            return
        _record_plan(ds, summary)
    except BaseException as exc:
        if started_ray and not isinstance(exc, Exception):         # a signal (SIGTERM, Ctrl-C) or an exit
            started_ray = abandon_ray()
        if cluster_failure(exc):
            started_ray = started_ray and abandon_ray()
            raise ClusterLostError(f"the Ray cluster failed under the run ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        raise
    finally:
        gc.unfreeze()
        if started_ray:
            shutdown_ray()


def _consume(ds, todo: Corpus, config: Config, writer: PartWriter, summary: RunSummary,
             listener: RunListener, metrics: RunMetrics, stop: GracefulStop) -> None:
    """Iterate the results, commit as parts fill; whatever is complete is committed also when the run
    stops early (an exception, the failure rate, `stop`)."""
    collector = VideoCollector(todo.table)
    try:
        with stop.handling():                      # SIGTERM / SIGINT: the clips in flight finish (drain.py)
            results = ds.iter_batches(batch_size=None, batch_format="pyarrow")
            for batch in pulled(results, stop, collector.in_flight):
                failpoint("driver.result")
                _take(batch, collector, writer, listener, summary)
                writer.maybe_commit()
                metrics.update(summary)
                metrics.set("videos_in_flight", len(collector.in_flight()))
                _check_failure_rate(summary, config.run.max_failure_rate, len(todo))
        if stop.signal is None:
            for event in collector.unfinished():
                writer.add(event)
        summary.interrupted = stop.name
    finally:
        if not (sys.exc_info()[1] and storage.failing()):     # ending with an error while the store is
            writer.commit()                                     # failing: a last commit would wait for it
        listener.finished()


def _take(batch: pa.Table, collector: VideoCollector, writer: PartWriter, listener: RunListener,
          summary: RunSummary) -> None:
    """One result block (clip rows of any videos) into the collector, the writer and the summary."""
    summary.decode_s += results.total(batch, "decode_s")
    summary.infer_s += results.total(batch, "infer_s")
    for tally, column in ((summary.decode_nodes, "decode_node"), (summary.infer_nodes, "infer_node")):
        for node, n in results.counts(batch, column).items():
            tally[node] = tally.get(node, 0) + n
    summary.devices += [d for d in results.counts(batch, "device") if d and d not in summary.devices]
    for row in results.rows(batch):
        for event in collector.add(row):
            writer.add(event)
            listener.video_done(event)
        listener.clip_done(row)


def _record_plan(ds, summary: RunSummary) -> None:
    stats = ds.stats()
    summary.operators = [line.split(":")[0].split(" ", 2)[-1] for line in stats.splitlines()
                         if line.startswith("Operator ")]
    log.debug("dataset stats:\n%s", stats)


def _check_failure_rate(summary: RunSummary, max_rate: float, todo: int) -> None:
    seen = summary.ok + summary.failed
    if max_rate < 1.0 and seen >= min(20, todo) and summary.failed / max(seen, 1) > max_rate:
        raise FailureRateExceeded(
            f"{summary.failed} of {seen} videos failed ({summary.failed / seen:.0%}), more than "
            f"--max-failure-rate {max_rate:.0%}; stopping. Committed videos are kept; see failures/.")
