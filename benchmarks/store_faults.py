"""A run's throughput with its output store behind a faulty network, against the same run on a healthy store
(issue #27 item 5), and what patience costs when nothing fails.

    python benchmarks/store_faults.py [--videos 24] [--rounds 3] [--json PATH]

The output is moto's S3 server on 127.0.0.1; every case is a whole `vidfeat extract` (tiny preset, random
weights, its own embedded Ray, one commit per video: the most store traffic a run makes per video) on the
same generated videos, to a fresh prefix. Cases:
  healthy         straight to the store, patience at its default (600 s)
  no_patience     straight to the store, VIDFEAT_STORAGE_PATIENCE_S=0: against `healthy`, patience's cost
                  when nothing fails
  proxy           through tests/faultproxy.py passing everything (the proxy's own cost)
  latency         through the proxy, each chunk held DELAY_S each way (~2 × DELAY_S more per round trip)
  throttle        through the proxy, S3's `503 Slow Down` for 1 s of every 5 s
  drops           through the proxy, connections refused for 1 s, then 4 s of service, then black-holed
                  (requests hang, then go on) for 2 s, then 5 s of service, over and over
Each round runs every case once in an order rotated each round (this machine's speed drifts); the table
gives each case's median wall seconds, videos per second and its ratio against `healthy` in the same
round (median and range), whether it ended 0 with every video once (`vidfeat verify`), and how many
'failing (...) retrying' lines its log has (the outages it met).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "benchmarks"), os.path.join(ROOT, "tests"), ROOT]

from faultproxy import FaultProxy  # noqa: E402
from measure import moto_s3  # noqa: E402

from pipeline.synthetic.samples import write_index_video  # noqa: E402

DELAY_S = 0.025
SCHEDULES = {"throttle": [("slowdown", 1.0), ("pass", 4.0)],
             "drops": [("refuse", 1.0), ("pass", 4.0), ("blackhole", 2.0), ("pass", 5.0)]}
CASES = ("healthy", "no_patience", "proxy", "latency", "throttle", "drops")
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


class Chaos:
    """Cycles `proxy` through a schedule of (mode, seconds) in a thread until stopped; "pass" after."""

    def __init__(self, proxy: FaultProxy, schedule: list[tuple[str, float]]):
        self.proxy, self.schedule, self.stopped = proxy, schedule, threading.Event()
        self.thread = threading.Thread(target=self._cycle, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self.proxy.mode = "pass"

    def _cycle(self) -> None:
        while not self.stopped.is_set():
            for mode, seconds in self.schedule:
                self.proxy.mode = mode
                if self.stopped.wait(seconds):
                    return


def make_videos(root: str, n: int) -> str:
    """A manifest of `n` generated videos of 3 clips each (tiny sampling)."""
    folder = os.path.join(root, "videos")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(n):
        path = os.path.join(folder, f"v{i:03d}.mp4")
        if not os.path.exists(path):
            write_index_video(path, num_frames=60)
        rows.append(f"v{i:03d}.mp4,{path}\n")
    manifest = os.path.join(root, "videos.csv")
    with open(manifest, "w") as fh:
        fh.write("video_id,uri\n" + "".join(rows))
    return manifest


def extract(manifest: str, out: str, env: dict, config: str) -> tuple[float, int, str]:
    """`vidfeat extract` to `out` with `env`: (wall seconds, exit code, stderr)."""
    cmd = [sys.executable, "-m", "pipeline", "extract", manifest, "--out", out, "--preset", "tiny",
           "--checkpoint", "random", "--config", config, "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    return time.perf_counter() - start, done.returncode, done.stderr


def verified(out: str, env: dict, videos: int) -> bool:
    """`vidfeat verify` passes and reports every video."""
    done = subprocess.run([sys.executable, "-m", "pipeline", "verify", out], env=env, capture_output=True,
                          text=True, timeout=600)
    return done.returncode == 0 and f"{videos} videos" in done.stdout


def run_case(case: str, s3, proxy: FaultProxy, manifest: str, config: str, videos: int, seq: int) -> dict:
    direct = case in ("healthy", "no_patience")
    env = {**os.environ, **LOOPBACK, **s3.env, "FSSPEC_S3_ENDPOINT_URL": s3.endpoint if direct else proxy.url}
    if case == "no_patience":
        env["VIDFEAT_STORAGE_PATIENCE_S"] = "0"
    proxy.delay_s, proxy.mode = DELAY_S, "delay" if case == "latency" else "pass"
    out = f"{s3.root}/{case}-{seq}"
    with Chaos(proxy, SCHEDULES[case]) if case in SCHEDULES else contextlib.nullcontext():
        wall, code, stderr = extract(manifest, out, env, config)
    proxy.mode = "pass"
    check_env = {**env, "FSSPEC_S3_ENDPOINT_URL": s3.endpoint}
    return {"wall_s": wall, "exit": code, "videos_per_s": videos / wall, "retried": stderr.count("retrying"),
            "verified": code == 0 and verified(out, check_env, videos), "tail": stderr[-600:] if code else ""}


def measure(args, s3, proxy: FaultProxy, manifest: str, config: str) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {c: [] for c in CASES}
    for r in range(args.rounds):
        order = list(CASES[r % len(CASES):] + CASES[:r % len(CASES)])
        for case in order:
            runs[case].append(run_case(case, s3, proxy, manifest, config, args.videos, r))
            last = runs[case][-1]
            print(f"round {r + 1}/{args.rounds} {case}: {last['wall_s']:.1f} s exit {last['exit']} "
                  f"verified {last['verified']} retried {last['retried']}", flush=True)
    return runs


def summarise(runs: dict[str, list[dict]]) -> dict:
    base = runs["healthy"]
    out = {}
    for case, rs in runs.items():
        ratios = [x["wall_s"] / y["wall_s"] for x, y in zip(rs, base)]
        out[case] = {"wall_s": statistics.median(x["wall_s"] for x in rs),
                     "videos_per_s": statistics.median(x["videos_per_s"] for x in rs),
                     "vs_healthy": statistics.median(ratios), "range": [min(ratios), max(ratios)],
                     "all_ok": all(x["verified"] for x in rs), "retried": [x["retried"] for x in rs]}
    return out


def print_table(summary: dict) -> None:
    print("| case | wall s (median) | videos/s | ÷ healthy, same round: median (range) | exit 0, verified | retry lines |")
    print("|---|---|---|---|---|---|")
    for case, s in summary.items():
        print(f"| {case} | {s['wall_s']:.1f} | {s['videos_per_s']:.2f} | {s['vs_healthy']:.2f}× "
              f"({s['range'][0]:.2f}–{s['range'][1]:.2f}) | {'yes' if s['all_ok'] else 'NO'} | "
              f"{', '.join(map(str, s['retried']))} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vidfeat-store-faults"))
    ap.add_argument("--json")
    args = ap.parse_args()
    manifest = make_videos(args.workdir, args.videos)
    config = os.path.join(args.workdir, "run.yaml")
    with open(config, "w") as fh:
        fh.write("run:\n  commit_every: 1\n")
    with moto_s3() as s3:
        proxy = FaultProxy(int(s3.endpoint.rsplit(":", 1)[1]))
        try:
            runs = measure(args, s3, proxy, manifest, config)
        finally:
            proxy.close()
    summary = summarise(runs)
    print_table(summary)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                       "date": time.strftime("%Y-%m-%d"), "videos": args.videos, "delay_s": DELAY_S,
                       "schedules": SCHEDULES, "summary": summary, "runs": runs}, fh, indent=1)


if __name__ == "__main__":
    main()
