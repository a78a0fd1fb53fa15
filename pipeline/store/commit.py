"""Committing results in parts: finished videos and failures are buffered, then written as one part —
its Parquet and HDF5 files published first, its ledger record last (see ledger.py)."""
from __future__ import annotations

import logging
import os
import time

import pipeline
import schemas
from pipeline.store.claims import overtaken_is_lost
from pipeline.store import segments
from pipeline.config import Config
from pipeline.faults import failpoint
from pipeline.scratch import scratch
from pipeline.store.ledger import FOLD_EVERY, Ledger
from pipeline.store import hdf5 as hdf5_sink
from pipeline.store import parquet as parquet_sink
from pipeline.store.publish import publish_file

log = logging.getLogger(__name__)


class PartWriter:
    """Buffers finished videos and failures; `commit()` writes one part: data files, then the ledger
    record. A part holds at most `commit_every` of them (videos and failures): `add` commits as soon as
    the buffer holds that many, however many one result block finished. `maybe_commit` also commits a
    buffer older than `commit_interval_s`. Every FOLD_EVERY commits the ledger's records are folded."""

    def __init__(self, ledger: Ledger, summary, provenance: dict, commit_every: int = 64,
                 commit_interval_s: float = 300.0, started: float | None = None, pin: tuple | None = None):
        self.ledger, self.summary, self.provenance = ledger, summary, provenance
        self.pin = pin                          # (fingerprint, features): pinned in run.json by the first commit
        self.started = started or time.time()
        self.commit_every, self.commit_interval_s = commit_every, commit_interval_s
        self.videos: list[dict] = []
        self.clips: dict[str, list[dict]] = {}
        self.failures: list[dict] = []
        self.seq, self.last_commit, self.unfolded = 0, time.time(), 0

    def add(self, event: dict) -> None:
        s = self.summary
        if "failure" in event:
            self.failures.append({**event["failure"], "run_id": self.provenance["run_id"]})
            s.failed += 1
            if len(s.failures) < 100:
                s.failures.append(self.failures[-1])
        else:
            video = event["video"]
            self.videos.append({**video, **self.provenance})
            self.clips[video["video_id"]] = event["clips"]
            s.ok, s.clips, s.video_hours = s.ok + 1, s.clips + video["num_clips"], s.video_hours + video["duration_s"] / 3600
        if self._pending() >= self.commit_every:
            self.commit()

    def maybe_commit(self) -> None:
        """Commit what is buffered when it has waited longer than `commit_interval_s`."""
        if self._pending() and time.time() - self.last_commit > self.commit_interval_s:
            self.commit()

    def _pending(self) -> int:
        return len(self.videos) + len(self.failures)

    def commit(self) -> None:
        """Write the buffered videos and failures as one part: data files, then the ledger record."""
        if not self._pending():
            return
        start = time.perf_counter()
        part = f"part-{self.provenance['run_id']}-{self.seq:05d}"
        self.ledger.check_fence()
        self.summary.bytes_written += write_part(self.ledger, part, self.videos, self.clips, self.failures,
                                                 self.provenance)
        failpoint("commit.data")
        if self.pin:
            self.ledger.pin(*self.pin)
            self.pin = None
        self.ledger.record(part, [v["video_id"] for v in self.videos], self.failures,
                           uris=[v["uri"] for v in self.videos])
        failpoint("commit.ledger")
        log.info("committed %s: %d videos, %d failures", part, len(self.videos), len(self.failures))
        self.videos, self.clips, self.failures = [], {}, []
        self.seq, self.last_commit, self.unfolded = self.seq + 1, time.time(), self.unfolded + 1
        if self.unfolded >= FOLD_EVERY:
            self.fold()
        self.summary.commit_s += time.perf_counter() - start
        if self.summary.first_commit_s is None:
            self.summary.first_commit_s = time.time() - self.started

    def fold(self) -> None:
        """Fold the ledger's records into its index; a failure is logged, not raised (the records are
        committed already; the next fold includes them)."""
        try:
            self.ledger.fold()
            self.unfolded = 0
        except Exception as exc:                                   # noqa: BLE001 - see docstring
            log.warning("could not fold the ledger of %s (%s: %s); will try again", self.ledger.out,
                        type(exc).__name__, exc)


def write_part(ledger: Ledger, part: str, videos: list[dict], clips: dict[str, list[dict]],
               failures: list[dict], provenance: dict) -> int:
    """Write and publish the data files of one part (not its ledger record); their bytes in all."""
    writers = {"failures": lambda path: parquet_sink.write_failures(failures, path)} if failures else {}
    if videos:
        dim, classes = len(videos[0]["embedding"]), len(videos[0]["logits"])
        all_clips = [c for v in videos for c in clips[v["video_id"]]]
        writers.update({
            "videos": lambda path: parquet_sink.write_videos(videos, dim, classes, path),
            "clips": lambda path: parquet_sink.write_clips(all_clips, dim, classes, path),
            "hdf5": lambda path: hdf5_sink.write_part(videos, clips, dim, classes, provenance, path)})
    written = 0
    with scratch("part") as tmp:
        for sub, write in writers.items():
            local = os.path.join(tmp, f"{sub}-{segments.file_name(part, sub)}")
            write(local)
            written += os.path.getsize(local)
            with overtaken_is_lost(ledger):
                publish_file(local, ledger.url(sub, segments.file_name(part, sub)))
    return written


def provenance(config: Config, sha: str, fingerprint: str, run_id: str) -> dict:
    """The provenance columns of every row this run writes."""
    s, p, d = config.sampling, config.preprocess, config.decode
    return {
        "checkpoint_sha256": sha, "preset": config.model.preset,
        "sampling": f"{s.num_frames}x{s.stride}@{s.target_fps:g}fps",
        "preprocessing": f"short{p.size}/crops{p.crops}/mean{','.join(map(str, p.mean))}/std{','.join(map(str, p.std))}",
        "decode": f"{d.backend}/{d.mode}/snap{d.max_snap}", "fingerprint": fingerprint,
        "schema_version": schemas.SCHEMA_VERSION, "code_version": pipeline.__version__, "run_id": run_id,
    }
