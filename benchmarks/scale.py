"""Corpus scale: what the driver pays per video, how fast a HowTo100M-sized run starts and resumes, what a
ledger load costs as parts accumulate, and what compaction buys readers.

    python benchmarks/scale.py driver --videos 6000 [--baseline]   # driver CPU ms/video, steady state
    python benchmarks/scale.py first-commit --rows 1220000         # time to first commit, driver peak RSS
    python benchmarks/scale.py ledger --parts 100,1000,16000 [--s3]  # load: index vs replaying every record
    python benchmarks/scale.py resume --done 1000000 --new 1000 [--s3]  # nightly run on a big output
    python benchmarks/scale.py compaction --videos 100000          # files and load_videos before/after

Every case uses tiny generated videos (the tiny preset, random weights, one clip a video) or synthetic
outputs with the real model's sizes (768-d embeddings, 1059 classes); S3 is moto's server on 127.0.0.1.
Results print as JSON lines; `--baseline` runs the feed of one Ray block per video (the design before
read tasks of several videos) in the same way, for the ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import scale_setup as setup  # noqa: E402
from measure import cpu_seconds, kill_tree, memory_mib, moto_s3, supervised_driver  # noqa: E402
from timing import timed_interleaved  # noqa: E402

from pipeline.config import Config  # noqa: E402
from pipeline.store.ledger import Ledger  # noqa: E402


def report(case: str, **numbers) -> dict:
    line = {"case": case, **{k: round(v, 4) if isinstance(v, float) else v for k, v in numbers.items()}}
    print(json.dumps(line), flush=True)
    return line


def tiny_config(**run) -> Config:
    return Config.from_preset("tiny", checkpoint="random").replace(run={"compact": False, **run})


# ====================================================================== driver cost per video

def old_feed(todo, config):
    """The feed before read tasks: one Ray block per video from `from_items`, decode per block."""
    import ray

    from pipeline.run.decode_stage import decode_videos
    from pipeline.run.feed import inference_resources
    from pipeline.run.infer import ClipEmbedder

    ds = ray.data.from_items(todo.table.to_pylist(), override_num_blocks=max(1, len(todo)))
    ds = ds.map_batches(decode_videos, batch_size=1, fn_kwargs={"config": config.to_dict()}, num_cpus=1,
                        memory=config.run.decode_memory_mb * 2**20)
    return ds.map_batches(ClipEmbedder, fn_constructor_kwargs={"config": config.to_dict()}, batch_size=1,
                          compute=ray.data.ActorPoolStrategy(size=1), **inference_resources(0, 2.0, 1))


def cmd_driver(args) -> None:
    """Driver CPU per video between its first and last commit (all driver threads, Ray's included)."""
    import pipeline.store.commit as commit
    import pipeline.run.runner as runner

    root = tempfile.mkdtemp(prefix="vidfeat-scale-")
    manifest = setup.write_manifest(os.path.join(root, "m.parquet"), args.videos, setup.tiny_video(root))
    marks = []
    original = commit.PartWriter.commit

    def commit_and_mark(self):
        original(self)
        marks.append((time.time(), cpu_seconds(), self.summary.ok + self.summary.failed))

    commit.PartWriter.commit = commit_and_mark
    if args.baseline:
        runner.build_dataset = old_feed
    started, c0 = time.time(), cpu_seconds()
    config = tiny_config(videos_per_task=args.videos_per_task, batch_size=args.batch_size)
    summary = runner.run_extract(manifest, os.path.join(root, "out"), config, progress=False)
    (t1, c1, v1), (t2, c2, v2) = marks[0], marks[-1]
    report("driver", feed="one block per video" if args.baseline else "read tasks", videos=summary.ok,
           videos_per_task=args.videos_per_task or "auto", batch_size=args.batch_size or "auto",
           first_commit_s=t1 - started, wall_s=time.time() - started, driver_cpu_s=cpu_seconds() - c0,
           steady_ms_per_video=(c2 - c1) / max(v2 - v1, 1) * 1000, steady_videos_per_s=(v2 - v1) / max(t2 - t1, 1e-9))
    shutil.rmtree(root, ignore_errors=True)


# ====================================================================== a HowTo100M-sized start

def cmd_first_commit(args) -> None:
    """`vidfeat extract` (embedded Ray) on a manifest of `rows` rows: first commit time, driver RSS."""
    root = tempfile.mkdtemp(prefix="vidfeat-scale-")
    manifest = setup.write_manifest(os.path.join(root, "m.parquet"), args.rows, setup.tiny_video(root))
    out = os.path.join(root, "out")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "extract", manifest, "--out", out, "--preset", "tiny",
                             "--checkpoint", "random", "--no-progress"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first, rss, driver = None, [], supervised_driver(proc.pid)   # the run's process, not its supervisor
    while time.time() - started < args.limit_s and (first is None or time.time() - first < args.after_s):
        rss.append(memory_mib(driver).get("VmRSS"))
        if first is None and os.path.isdir(os.path.join(out, "ledger")) and Ledger(out).load().records:
            first = time.time()
        time.sleep(0.25)
    peak = memory_mib(driver).get("VmHWM")
    kill_tree(proc)                 # the driver, its embedded Ray and Ray's workers: no other Ray
    report("first-commit", rows=args.rows, first_commit_s=(first - started) if first else None,
           driver_peak_rss_mib=peak, driver_rss_at_end_mib=rss[-1] if rss else None,
           committed_videos=len(Ledger(out).load().done_ids), watched_after_first_s=args.after_s)
    shutil.rmtree(root, ignore_errors=True)


# ====================================================================== ledger load vs parts

def cmd_ledger(args) -> None:
    """Ledger.load (index + unfolded records) vs replaying every record (the load before the index)."""
    from pipeline.store.ledger_state import LedgerState, replay

    for parts in [int(p) for p in args.parts.split(",")]:
        with _storage(args.s3) as base:
            out = f"{base}/ledger-{parts}"
            ledger = setup.fill_ledger(out, parts, args.per_part)
            load = _median(lambda: Ledger(out).load(), args.rounds)
            everything = lambda: replay(LedgerState(), [ledger._read_record(p) for p in  # noqa: E731
                                                        ledger._json_files("ledger/records")])
            full = _median(everything, 1 if parts > 2000 and args.s3 else args.rounds)
            report("ledger", storage="s3 (moto)" if args.s3 else "local", parts=parts,
                   done_ids=parts * args.per_part, load_s=load, replay_every_record_s=full, ratio=full / load)


def _median(fn, rounds: int) -> float:
    """Median seconds of `rounds` calls of `fn`."""
    return timed_interleaved({"fn": fn}, rounds, warmup=0)[0]["fn"]


@contextlib.contextmanager
def _storage(s3: bool):
    """A fresh folder: local temp dir, or a moto S3 bucket."""
    if s3:
        with moto_s3() as server:
            yield server.root
        return
    tmp = tempfile.mkdtemp(prefix="vidfeat-scale-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ====================================================================== the nightly resume

def cmd_resume(args) -> None:
    """An output with `done` videos in parts of 64, compacted; the manifest grows by `new` videos.
    Time from the start of run_extract to the Ray Data graph being built (decoding starts), to the
    first result and to the first commit; Ray start included."""
    import pipeline.run.runner as runner

    with _storage(args.s3) as base:
        out = f"{base}/out"
        t = time.time()
        ledger = setup.fill_ledger(out, args.done // 64, 64)
        setup.compact_ledger(ledger, max(1, args.done // 64 // 64))
        tmp = tempfile.mkdtemp(prefix="vidfeat-scale-")
        video = setup.tiny_video(tmp)
        manifest = setup.write_manifest(os.path.join(tmp, "m.parquet"), args.done + args.new, video)
        setup_s = time.time() - t
        marks = {}
        build = runner.build_dataset

        def timed_build(todo, config):
            marks["graph_built"] = time.time()
            return build(todo, config)

        runner.build_dataset = timed_build
        started = time.time()
        summary = runner.run_extract(manifest, out, tiny_config(), progress=False)
        report("resume", storage="s3 (moto)" if args.s3 else "local", done_before=args.done, new=args.new,
               parts=args.done // 64, setup_s=setup_s, decoding_starts_s=marks["graph_built"] - started,
               first_commit_s=summary.first_commit_s, run_s=summary.wall_s, ok=summary.ok, skipped=summary.skipped)
        shutil.rmtree(tmp, ignore_errors=True)


# ====================================================================== compaction and readers

def cmd_compaction(args) -> None:
    """Files per kind and `load_videos` time on a `videos`-video output, as committed and compacted
    (a copy of the same output, interleaved rounds)."""
    from pipeline.store.compaction import compact
    from pipeline.read.features import load_videos

    root = tempfile.mkdtemp(prefix="vidfeat-scale-", dir=args.tmp)
    parts, merged = os.path.join(root, "parts"), os.path.join(root, "compacted")
    setup.synthetic_output(parts, args.videos)
    shutil.copytree(parts, merged)
    result = compact(merged, target_mb=args.target_mb)
    count = {name: (lambda out=out: len(load_videos(out).ids))
             for name, out in (("parts", parts), ("compacted", merged))}
    secs, counts = timed_interleaved(count, args.rounds, warmup=0)     # one load alive at a time
    assert all(n == args.videos for n in counts.values())
    before, after = secs["parts"], secs["compacted"]
    report("compaction", videos=args.videos, files_before=result.files_before, files_after=result.files_after,
           compact_s=result.seconds, bytes_rewritten_mib=result.bytes_rewritten / 2**20,
           load_videos_parts_s=before, load_videos_compacted_s=after, speedup=before / after)
    report("bytes-per-video", **_bytes_per_video(root))
    shutil.rmtree(root, ignore_errors=True)


def _bytes_per_video(root: str, videos: int = 2000, clips: int = 4) -> dict:
    """Bytes a video takes in each kind with `clips` clips (HowTo100M averages 3.86 at 102.4 s a clip)."""
    out = os.path.join(root, "sample")
    setup.synthetic_output(out, videos, clips_per_video=clips)
    sizes = {sub: sum(os.path.getsize(os.path.join(out, sub, f)) for f in os.listdir(os.path.join(out, sub)))
             for sub in ("videos", "clips", "hdf5")}
    return {"clips_per_video": clips, **{f"{sub}_bytes_per_video": n / videos for sub, n in sizes.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="case", required=True)
    p = sub.add_parser("driver")
    p.add_argument("--videos", type=int, default=6000)
    p.add_argument("--baseline", action="store_true")
    p.add_argument("--videos-per-task", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=0, help="clips per inference batch (0: the default)")
    p.set_defaults(func=cmd_driver)
    p = sub.add_parser("first-commit")
    p.add_argument("--rows", type=int, default=1_220_000)
    p.add_argument("--after-s", type=float, default=30.0, help="keep watching RSS this long after the commit")
    p.add_argument("--limit-s", type=float, default=300.0)
    p.set_defaults(func=cmd_first_commit)
    p = sub.add_parser("ledger")
    p.add_argument("--parts", default="100,1000,16000")
    p.add_argument("--per-part", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--s3", action="store_true")
    p.set_defaults(func=cmd_ledger)
    p = sub.add_parser("resume")
    p.add_argument("--done", type=int, default=1_000_000)
    p.add_argument("--new", type=int, default=1000)
    p.add_argument("--s3", action="store_true")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("compaction")
    p.add_argument("--videos", type=int, default=100_000)
    p.add_argument("--target-mb", type=float, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tmp", default=None, help="where to build the outputs (a few GB)")
    p.set_defaults(func=cmd_compaction)
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    args.func(args)


if __name__ == "__main__":
    main()
