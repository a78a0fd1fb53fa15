"""The story of one run: corpus in, committed features out.

1. Read the corpus; open the output's ledger; refuse a different fingerprint; delete files of
   uncommitted parts; keep only the videos still to do.
2. Start (or join) Ray and build the Ray Data graph: videos → decode (CPU tasks, a generator yielding
   one clip at a time) → inference (an actor pool, one GPU per actor when there are GPUs).
3. Stream the results in the driver: `VideoCollector` assembles each video when its last clip is in,
   `PartWriter` buffers finished videos and failures and commits them in parts (data first, ledger last).
4. Summarise: videos ok / failed / skipped, clips, hours of video, time per stage; the exit code says
   whether anything failed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

import pipeline
import schemas
from pipeline.aggregate import aggregate_video
from pipeline.config import Config
from pipeline.corpus import VideoRecord, read_corpus
from pipeline.errors import ConfigError, DecodeError, VidfeatError
from pipeline.faults import failpoint
from pipeline.ledger import Ledger
from pipeline.model import checkpoint_sha256, get_preset
from pipeline.sinks import publish_bytes, publish_file
from pipeline.sinks import hdf5 as hdf5_sink
from pipeline.sinks import parquet as parquet_sink
from pipeline.transforms import FRAME_DTYPES

log = logging.getLogger(__name__)


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
    devices: list[str] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)      # the Ray Data plan as executed
    failures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["failures"] = d["failures"][:100]
        d["video_s_per_s"] = self.video_hours * 3600 / self.wall_s if self.wall_s else 0.0
        return d


def run_extract(source: str, out: str, config: Config, *, progress: bool = True) -> RunSummary:
    """Extract features for every video of `source` not yet done in `out`. See module doc."""
    started = time.time()
    summary = RunSummary(run_id=time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    if config.model.checkpoint is None:
        p = get_preset(config.model.preset)
        raise ConfigError(f"no checkpoint given: pass --checkpoint PATH|URL (preset {p.name} expects "
                          f"{p.checkpoint_file or 'a checkpoint'}) or --checkpoint random for random weights")
    records = read_corpus(source)
    ledger = Ledger(out)
    state = ledger.load()
    sha = checkpoint_sha256(config.model.checkpoint, seed=config.model.seed, preset=config.model.preset)
    fingerprint = config.fingerprint(sha)
    ledger.check_fingerprint(fingerprint, config.feature_fields())
    ledger.collect_garbage(state)
    todo_ids = set(state.pending([r.video_id for r in records], config.run.retry_failed))
    todo = [r for r in records if r.video_id in todo_ids]
    summary.total, summary.skipped = len(records), len(records) - len(todo)
    log.info("%d videos in the corpus, %d already done or failed, %d to do", len(records), summary.skipped, len(todo))
    if todo:
        writer = PartWriter(ledger, summary, provenance(config, sha, fingerprint, summary.run_id),
                            commit_every=config.run.commit_every)
        _stream(todo, config, writer, summary, progress)
    summary.wall_s = time.time() - started
    record = {"source": source, "config": config.to_dict(), "summary": summary.to_dict()}
    publish_bytes(json.dumps(record, indent=2).encode(),
                  ledger.url("runs", f"{summary.run_id}.json"))
    return summary


def _stream(todo: list[VideoRecord], config: Config, writer: "PartWriter", summary: RunSummary,
            progress: bool) -> None:
    """Run the Ray Data graph over `todo` and commit results as they come."""
    started_ray = connect_ray(config.run.address)
    try:
        ds = build_dataset(todo, config)
        collector = VideoCollector({r.video_id: r.uri for r in todo})
        bars = Progress(len(todo), enabled=progress)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                failpoint("driver.result")
                for row in _rows(batch):
                    summary.decode_s += float(row.get("decode_s", 0.0))
                    summary.infer_s += float(row.get("infer_s", 0.0))
                    if row.get("device") and str(row["device"]) not in summary.devices:
                        summary.devices.append(str(row["device"]))
                    for event in collector.add(row):
                        writer.add(event)
                        bars.video_done(event)
                    bars.clip_done()
                writer.maybe_commit()
                _check_failure_rate(summary, config.run.max_failure_rate, len(todo))
            for vid in collector.unfinished():
                writer.add({"failure": {"video_id": vid, "uri": collector.uris[vid], "stage": "decode",
                                        "error": "incomplete: the pipeline returned no final clip for this video"}})
        finally:
            writer.commit()                  # whatever is complete is kept, also when the run stops early
            bars.close()
        stats = ds.stats()
        summary.operators = [line.split(":")[0].split(" ", 2)[-1] for line in stats.splitlines()
                             if line.startswith("Operator ")]
        log.debug("dataset stats:\n%s", stats)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def build_dataset(todo: list[VideoRecord], config: Config):
    """videos → decode (CPU tasks, one clip per yielded batch) → inference (actor pool) → results."""
    import ray

    from pipeline.infer import ClipEmbedder

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 1.0)
    actors = config.run.num_actors or max(gpus, 1)
    batch = config.run.batch_size or (4 if gpus else 1)
    infer_args = inference_resources(gpus, cpus, actors)
    ds = ray.data.from_items([{"video_id": r.video_id, "uri": r.uri} for r in todo],
                             override_num_blocks=max(1, len(todo)))
    # The decode stage reserves memory per task (a clip of decoded frames plus the decoder): it bounds
    # how many decoders share a node, and keeps Ray Data from fusing decode and inference into one
    # operator, which would serialise decoding behind the model.
    decode_args = {"num_cpus": 1, "memory": config.run.decode_memory_mb * 2**20}
    if config.run.num_decoders:
        decode_args["compute"] = ray.data.TaskPoolStrategy(size=config.run.num_decoders)
    ds = ds.map_batches(decode_videos, batch_size=1, fn_kwargs={"config": config.to_dict()}, **decode_args)
    return ds.map_batches(
        ClipEmbedder, fn_constructor_kwargs={"config": config.to_dict()}, batch_size=batch,
        compute=ray.data.ActorPoolStrategy(size=actors), **infer_args)   # Ray restarts dead actors, retries their batches


def inference_resources(gpus: int, cpus: float, actors: int) -> dict:
    """Ray resources of one inference actor. GPU actors take one GPU and at most one CPU; CPU actors
    take half the CPUs between them. Either way at least one CPU is left for decoding, or the pool
    would hold every CPU and the decode stage would never be scheduled."""
    if gpus:
        return {"num_gpus": 1, "num_cpus": round(min(1.0, max(0.1, (cpus - 1) / actors)), 2)}
    return {"num_cpus": max(0.5, min(cpus / 2, cpus - 1) / actors)}


def decode_videos(batch: dict[str, np.ndarray], config: dict):
    """Decode stage: one video row in → one batch per clip out (then failures as rows, never raised)."""
    from pipeline.decode import decode_clips

    cfg = Config.from_dict(config)
    for vid, uri in zip(batch["video_id"], batch["uri"]):
        vid, uri = str(vid), str(uri)
        held, start = None, time.perf_counter()
        try:
            for clip in decode_clips(uri, cfg, video_id=vid):
                if held is not None:
                    yield _clip_batch(vid, uri, held, cfg, last=False, seconds=time.perf_counter() - start)
                    start = time.perf_counter()
                held = clip
            yield _clip_batch(vid, uri, held, cfg, last=True, seconds=time.perf_counter() - start)
        except DecodeError as exc:
            yield _failure_batch(vid, uri, "decode", f"{exc.kind}: {exc.reason}", cfg)
        except Exception as exc:                                   # noqa: BLE001 - a bug must not stop the run
            log.exception("unexpected error decoding %s", vid)
            yield _failure_batch(vid, uri, "decode", f"unexpected: {type(exc).__name__}: {exc}", cfg)


def _clip_batch(vid: str, uri: str, clip, cfg: Config, last: bool, seconds: float) -> dict[str, np.ndarray]:
    from pipeline.transforms import crop

    crops = np.stack(crop(clip.frames, cfg.preprocess.size, cfg.preprocess.crops))   # [crops, T, S, S, 3]
    return {
        "video_id": np.array([vid]), "uri": np.array([uri]), "clip_index": np.array([clip.index], np.int32),
        "last": np.array([last]), "start_s": np.array([clip.start_s]), "end_s": np.array([clip.end_s]),
        "valid_frames": np.array([clip.valid_frames], np.int32),
        "frame_indices": np.array([np.asarray(clip.frame_indices, np.int64)]),
        "frames": crops[None], "error": np.array([""]), "stage": np.array([""]),
        "decode_s": np.array([seconds]),
    }


def _failure_batch(vid: str, uri: str, stage: str, error: str, cfg: Config) -> dict[str, np.ndarray]:
    t = cfg.sampling.num_frames
    return {
        "video_id": np.array([vid]), "uri": np.array([uri]), "clip_index": np.array([-1], np.int32),
        "last": np.array([True]), "start_s": np.array([0.0]), "end_s": np.array([0.0]),
        "valid_frames": np.array([0], np.int32), "frame_indices": np.zeros((1, t), np.int64),
        "frames": np.zeros((1, 0, t, 0, 0, 3), FRAME_DTYPES.get(cfg.preprocess.frame_dtype, np.uint8)),   # as clips
        "error": np.array([error]), "stage": np.array([stage]),
        "decode_s": np.array([0.0]),
    }


def _rows(batch: dict[str, np.ndarray]):
    n = len(batch["video_id"])
    for i in range(n):
        yield {k: v[i] for k, v in batch.items()}


class VideoCollector:
    """Assembles clip rows into videos. `add(row)` returns the events it completes:
    {"video": row, "clips": [...]} when a video's clips 0..last are all in, {"failure": {...}} when a
    video failed (its other clips, earlier or later, are dropped)."""

    def __init__(self, uris: dict[str, str]):
        self.uris = uris
        self.clips: dict[str, dict[int, dict]] = {}
        self.last: dict[str, int] = {}
        self.finished: set[str] = set()

    def add(self, row: dict) -> list[dict]:
        vid = str(row["video_id"])
        if vid in self.finished:
            return []
        if row["error"]:
            self.finished.add(vid)
            self.clips.pop(vid, None)
            return [{"failure": {"video_id": vid, "uri": self.uris.get(vid, str(row["uri"])),
                                 "stage": str(row["stage"]), "error": str(row["error"])}}]
        clip = _clip_record(vid, row)
        self.clips.setdefault(vid, {})[clip["clip_index"]] = clip
        if bool(row["last"]):
            self.last[vid] = clip["clip_index"]
        if vid in self.last and len(self.clips[vid]) == self.last[vid] + 1:
            return [self._finish(vid)]
        return []

    def _finish(self, vid: str) -> dict:
        self.finished.add(vid)
        clips = [c for _, c in sorted(self.clips.pop(vid).items())]
        try:
            video = {"video_id": vid, "uri": self.uris[vid], **aggregate_video(clips)}
        except ValueError as exc:
            return {"failure": {"video_id": vid, "uri": self.uris[vid], "stage": "aggregate", "error": str(exc)}}
        return {"video": video, "clips": clips}

    def unfinished(self) -> list[str]:
        return sorted(set(self.uris) - self.finished)


def _clip_record(vid: str, row: dict) -> dict:
    return {"video_id": vid, "clip_index": int(row["clip_index"]), "start_s": float(row["start_s"]),
            "end_s": float(row["end_s"]), "valid_frames": int(row["valid_frames"]),
            "frame_indices": [int(i) for i in row["frame_indices"]],
            "embedding": np.asarray(row["embedding"], np.float32), "logits": np.asarray(row["logits"], np.float32)}


class PartWriter:
    """Buffers finished videos and failures; `commit()` writes one part: data files, then the ledger."""

    def __init__(self, ledger: Ledger, summary: RunSummary, provenance: dict, commit_every: int = 64,
                 commit_interval_s: float = 300.0):
        self.ledger, self.summary, self.provenance = ledger, summary, provenance
        self.commit_every, self.commit_interval_s = commit_every, commit_interval_s
        self.videos: list[dict] = []
        self.clips: dict[str, list[dict]] = {}
        self.failures: list[dict] = []
        self.seq, self.last_commit = 0, time.time()

    def add(self, event: dict) -> None:
        s = self.summary
        if "failure" in event:
            self.failures.append({**event["failure"], "run_id": self.provenance["run_id"]})
            s.failed += 1
            s.failures.append(self.failures[-1])
        else:
            video = event["video"]
            self.videos.append({**video, **self.provenance})
            self.clips[video["video_id"]] = event["clips"]
            s.ok, s.clips, s.video_hours = s.ok + 1, s.clips + video["num_clips"], s.video_hours + video["duration_s"] / 3600

    def maybe_commit(self) -> None:
        pending = len(self.videos) + len(self.failures)
        if pending >= self.commit_every or (pending and time.time() - self.last_commit > self.commit_interval_s):
            self.commit()

    def commit(self) -> None:
        if not self.videos and not self.failures:
            return
        start = time.perf_counter()
        part = f"part-{self.provenance['run_id']}-{self.seq:05d}"
        write_part(self.ledger, part, self.videos, self.clips, self.failures, self.provenance)
        failpoint("commit.data")
        self.ledger.record(part, [v["video_id"] for v in self.videos], self.failures)
        failpoint("commit.ledger")
        self.summary.commit_s += time.perf_counter() - start
        log.info("committed %s: %d videos, %d failures", part, len(self.videos), len(self.failures))
        self.videos, self.clips, self.failures = [], {}, []
        self.seq, self.last_commit = self.seq + 1, time.time()


def write_part(ledger: Ledger, part: str, videos: list[dict], clips: dict[str, list[dict]],
               failures: list[dict], provenance: dict) -> None:
    """Write and publish the data files of one part (not its ledger record)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vidfeat-part-") as tmp:
        if videos:
            dim, classes = len(videos[0]["embedding"]), len(videos[0]["logits"])
            all_clips = [c for v in videos for c in clips[v["video_id"]]]
            files = {
                "videos": lambda p: parquet_sink.write_videos(videos, dim, classes, p),
                "clips": lambda p: parquet_sink.write_clips(all_clips, dim, classes, p),
                "hdf5": lambda p: hdf5_sink.write_part(videos, clips, dim, classes, provenance, p),
            }
            for sub, write in files.items():
                ext = "h5" if sub == "hdf5" else "parquet"
                local = os.path.join(tmp, f"{sub}.{ext}")
                write(local)
                publish_file(local, ledger.url(sub, f"{part}.{ext}"))
        if failures:
            local = os.path.join(tmp, "failures.parquet")
            parquet_sink.write_failures(failures, local)
            publish_file(local, ledger.url("failures", f"{part}.parquet"))


def provenance(config: Config, sha: str, fingerprint: str, run_id: str) -> dict:
    s, p, d = config.sampling, config.preprocess, config.decode
    return {
        "checkpoint_sha256": sha, "preset": config.model.preset,
        "sampling": f"{s.num_frames}x{s.stride}@{s.target_fps:g}fps",
        "preprocessing": f"short{p.size}/crops{p.crops}/mean{','.join(map(str, p.mean))}/std{','.join(map(str, p.std))}",
        "decode": f"{d.backend}/{d.mode}/snap{d.max_snap}", "fingerprint": fingerprint,
        "schema_version": schemas.SCHEMA_VERSION, "code_version": pipeline.__version__, "run_id": run_id,
    }


def _check_failure_rate(summary: RunSummary, max_rate: float, todo: int) -> None:
    seen = summary.ok + summary.failed
    if max_rate < 1.0 and seen >= min(20, todo) and summary.failed / max(seen, 1) > max_rate:
        raise FailureRateExceeded(
            f"{summary.failed} of {seen} videos failed ({summary.failed / seen:.0%}), more than "
            f"--max-failure-rate {max_rate:.0%}; stopping. Committed videos are kept; see failures/.")


def connect_ray(address: str | None) -> bool:
    """Join the cluster at `address` / RAY_ADDRESS, else start an embedded local Ray bound to 127.0.0.1.
    Returns True when this call started or joined Ray (and so must shut down / disconnect)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address.split("://")[-1].rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        # single node on loopback; Ray reads this when it is first imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": forwarded_env()})
        return True
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def forwarded_env() -> dict[str, str]:
    """The driver's VIDFEAT_* and FSSPEC_* variables (failpoints, storage settings such as an S3
    endpoint), passed on to the cluster's workers: on a cluster they do not inherit the driver's env."""
    return {k: v for k, v in os.environ.items() if k.startswith(("VIDFEAT_", "FSSPEC_"))}


class Progress:
    """Progress bars (tqdm) for videos and clips, with ETA; the clip total is estimated as it goes."""

    def __init__(self, videos: int, enabled: bool = True):
        from tqdm.auto import tqdm

        self.total_videos = videos
        self.videos = tqdm(total=videos, desc="videos", unit="video", disable=not enabled, position=0)
        self.clips = tqdm(total=None, desc="clips ", unit="clip", disable=not enabled, position=1)
        self.clips_done, self.videos_done = 0, 0

    def video_done(self, event: dict) -> None:
        self.videos_done += 1
        self.videos.update(1)
        if "video" in event and self.videos_done:
            self.clips.total = int(self.clips_done / self.videos_done * self.total_videos) + 1
            self.clips.refresh()

    def clip_done(self) -> None:
        self.clips_done += 1
        self.clips.update(1)

    def close(self) -> None:
        self.videos.close()
        self.clips.close()
