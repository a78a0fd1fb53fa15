"""Decode throughput from a store that behaves like S3 against the same corpus on local disk (run by hand).

    python benchmarks/remote_decode.py [--videos 12] [--per-task N] [--seconds 60] [--rounds 3] [--store moto|local]
        [--latency-ms 30] [--mb-per-s 50] [--json PATH]

The corpus (generated with the ffmpeg CLI: 640×360 30 fps test pattern with noise, x264's defaults)
goes to moto's S3 server on 127.0.0.1, read through `slows3://`, an s3fs file system that behaves like
object storage seen from a cloud VM: every request (a size, a ranged GET) waits `--latency-ms` first, and
every byte is capped at `--mb-per-s` per stream. `--store local` serves the same files through the same
delays from local disk (`slowfile://`), without moto's server CPU, which on a 2-core machine competes
with the decoder where real S3 would not. Each round decodes the whole corpus as one decode task
does (`pipeline.run.decode_stage.decode_videos`, default config, the watchdog worker already started):
  local        the videos on local disk
  remote       the same videos from slows3:// (the stage prefetches the next video while one decodes;
               each download is 8 concurrent ranged reads, decode/ranged.py)
  one_stream   the same, each download one stream (VIDFEAT_DOWNLOAD_STREAMS=1)
  no_prefetch  one stream, each video downloaded whole before its decoding starts (before issue #18)
`--per-task N` cuts the corpus into consecutive tasks of N videos (a run's first tasks hold 1 each).
Rounds are interleaved; the table gives each case's median video-seconds per second and its ratio to
local (target: remote ≥ 0.97×), the median of the per-round ratios, and the share of each task's time
the slot spent waiting for a video's file (timed around `Prefetcher.local` / `local_copy`): on a VM whose
speed drifts 20–30% within minutes, 1 − that share is the ratio the overlap gives, free of the drift.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from measure import moto_s3  # noqa: E402
from timing import medians  # noqa: E402

ENCODER = ["-c:v", "libx264", "-crf", "23"]            # x264's defaults (b-pyramid, keyint 250)


def make_corpus(folder: str, videos: int, seconds: float) -> list[str]:
    """`videos` distinct videos (their noise seeds differ), made once per folder."""
    paths = []
    for i in range(videos):
        path = os.path.join(folder, f"v{i:02d}_{seconds:g}s.mp4")
        if not os.path.exists(path):
            src = f"testsrc2=size=640x360:rate=30:duration={seconds},noise=alls=6:allf=t:all_seed={i + 1}"
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src, *ENCODER, "-pix_fmt", "yuv420p",
                            path], check=True)
        paths.append(path)
    return paths


def register_slow_s3(latency_s: float, bytes_per_s: float) -> None:
    """`slows3://`: s3fs on the configured endpoint, each request delayed and each stream capped."""
    import fsspec
    import s3fs

    class SlowS3(s3fs.S3FileSystem):
        protocol = ("slows3",)

        async def _info(self, path, **kw):
            await asyncio.sleep(latency_s)                     # a HEAD request's first byte
            return await super()._info(path, **kw)

        async def _cat_file(self, path, start=None, end=None, **kw):
            data = await super()._cat_file(path, start=start, end=end, **kw)
            await asyncio.sleep(latency_s + len(data) / bytes_per_s)   # one ranged GET, its own stream
            return data

        def _open(self, path, mode="rb", **kw):
            f = super()._open(path, mode, **kw)
            fetch = f.cache.fetcher                            # the cache holds the bound fetcher

            def slow(start, end):
                time.sleep(latency_s + (end - start) / bytes_per_s)
                return fetch(start, end)
            f.cache.fetcher = slow
            return f

    fsspec.register_implementation("slows3", SlowS3, clobber=True)
    fsspec.config.conf["slows3"] = fsspec.config.conf["s3"]


def register_slow_local(latency_s: float, bytes_per_s: float) -> None:
    """`slowfile://`: local files behind the same delays, served at no CPU cost (a store on another
    machine: moto on this one takes CPU from the decoder that S3 would not). Like s3fs it is an async
    file system: ranged reads (`cat_ranges`) run concurrently, each capped as its own stream."""
    import fsspec
    from fsspec.asyn import AsyncFileSystem
    from fsspec.implementations.local import LocalFileSystem

    local = LocalFileSystem()

    class Slow:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            time.sleep(latency_s + len(data) / bytes_per_s)    # every read is a ranged GET
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    class SlowLocal(AsyncFileSystem):                # not a LocalFileSystem: a remote store to its readers
        protocol = ("slowfile",)

        async def _info(self, path, **kw):
            await asyncio.sleep(latency_s)
            return local.info(self._strip_protocol(path), **kw)

        async def _cat_file(self, path, start=None, end=None, **kw):
            data = local.cat_file(self._strip_protocol(path), start=start, end=end)
            await asyncio.sleep(latency_s + len(data) / bytes_per_s)
            return data

        def _open(self, path, mode="rb", **kw):
            return Slow(local._open(self._strip_protocol(path), mode, **kw))

    fsspec.register_implementation("slowfile", SlowLocal, clobber=True)


WAITED = [0.0]                         # seconds the decode slot waited for a video's local file


@contextlib.contextmanager
def timed_wait(open_local):
    """`open_local()`'s context, the time to enter it (the slot waiting for the file) added to WAITED."""
    start = time.perf_counter()
    with open_local() as path:
        WAITED[0] += time.perf_counter() - start
        yield path


def count_waits() -> None:
    """Time every wait of the stage's prefetcher for its file (`Prefetcher.local`)."""
    from pipeline.decode.prefetch import Prefetcher

    plain = Prefetcher.local
    Prefetcher.local = lambda self, uri, video: timed_wait(lambda: plain(self, uri, video))


def decode_task(uris: list[str], prefetch: bool, streams: int) -> float:
    """Seconds to decode `uris` as one decode task (the decode stage's own function), downloads made
    with `streams` concurrent ranged reads (1: one stream)."""
    import numpy as np

    from pipeline.config import Config
    from pipeline.decode.source import local_copy
    from pipeline.run import decode_stage

    os.environ["VIDFEAT_DOWNLOAD_STREAMS"] = str(streams)
    batch = {"row": np.arange(len(uris)), "video_id": np.array([f"v{i}" for i in range(len(uris))], dtype=object),
             "uri": np.array(uris, dtype=object)}
    config = Config().to_dict()
    start = time.perf_counter()
    if prefetch:
        errors = [b["error"][0] for b in decode_stage.decode_videos(batch, config)]
    else:
        cfg = decode_stage.decoding_config(Config.from_dict(config))
        fetch = lambda uri, video: timed_wait(lambda: local_copy(uri, video))   # noqa: E731
        errors = [b["error"][0] for vid, uri in zip(batch["video_id"], uris)
                  for b in decode_stage._decode_one(vid, uri, cfg, fetch)]
    seconds = time.perf_counter() - start
    if any(errors):
        raise RuntimeError(f"decode failed: {[e for e in errors if e][:3]}")
    return seconds


def decode_tasks(uris: list[str], per_task: int, prefetch: bool = True, streams: int = 8) -> tuple[float, float]:
    """(seconds, seconds waiting for files) to decode `uris` as consecutive tasks of `per_task` videos,
    one after another (one slot)."""
    WAITED[0] = 0.0
    seconds = sum(decode_task(uris[i:i + per_task], prefetch, streams) for i in range(0, len(uris), per_task))
    return seconds, WAITED[0]


def remote_uris(stack: contextlib.ExitStack, args, paths: list[str]) -> list[str]:
    """The corpus in the chosen store (`--store`): moto's S3 behind the delays, or local files behind them."""
    latency, rate = args.latency_ms / 1000, args.mb_per_s * 1e6
    if args.store == "local":
        register_slow_local(latency, rate)
        return [f"slowfile://{p}" for p in paths]
    s3 = stack.enter_context(moto_s3())
    bucket = s3.root.removeprefix("s3://")
    for path in paths:
        s3.fs.put_file(path, f"{bucket}/{os.path.basename(path)}")
    register_slow_s3(latency, rate)
    return [f"slows3://{bucket}/{os.path.basename(p)}" for p in paths]


def run(args) -> dict:
    folder = args.workdir or os.path.join(tempfile.gettempdir(), "vidfeat-bench-remote")
    os.makedirs(folder, exist_ok=True)
    paths = make_corpus(folder, args.videos, args.seconds)
    with contextlib.ExitStack() as stack:
        remote = remote_uris(stack, args, paths)
        n = args.per_task or len(paths)
        cases = {"local": lambda: decode_tasks(paths, n), "remote": lambda: decode_tasks(remote, n),
                 "one_stream": lambda: decode_tasks(remote, n, streams=1),
                 "no_prefetch": lambda: decode_tasks(remote, n, prefetch=False, streams=1)}
        count_waits()
        cases["local"]()                                       # worker started, caches warm
        timed = [{name: fn() for name, fn in cases.items()} for _ in range(args.rounds)]
    rounds = [{k: s for k, (s, _) in r.items()} for r in timed]
    med = medians(rounds)
    video_s = args.videos * args.seconds
    ratios = {k: statistics.median(r["local"] / r[k] for r in rounds) for k in cases}
    waits = {k: statistics.median(w / s for r in timed for s, w in [r[k]]) for k in cases}
    return {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "videos": args.videos, "seconds": args.seconds,
            "per_task": args.per_task or args.videos,
            "mb": round(sum(os.path.getsize(p) for p in paths) / 1e6, 1), "latency_ms": args.latency_ms,
            "mb_per_s": args.mb_per_s, "store": args.store, "rounds": rounds, "median_s": med,
            "video_s_per_s": {k: video_s / v for k, v in med.items()},
            "vs_local": {k: med["local"] / v for k, v in med.items()}, "round_ratio_median": ratios,
            "waiting_share": waits}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=12, help="videos of the task (a steady-state task has more)")
    ap.add_argument("--per-task", type=int, default=0,
                    help="videos per decode task (default: all in one; a run's first tasks hold 1)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=30.0, help="wait before every request's first byte")
    ap.add_argument("--mb-per-s", type=float, default=50.0, help="bandwidth of one stream, MB/s")
    ap.add_argument("--store", choices=("moto", "local"), default="moto",
                    help="moto: S3 on this machine (its CPU competes with decoding); local: files, same delays")
    ap.add_argument("--workdir", help="where the corpus is generated (kept for later runs)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
