"""Peak memory and time of the report's neighbour gallery: part by part vs the whole index in memory.

    python benchmarks/report_memory.py --videos 100000 [--per-part 1024] [--rounds 2] [--tmp DIR]

Builds a committed output of `videos` synthetic videos with the real model's sizes (768-d embeddings,
1059 classes; benchmarks/scale_setup.py), then, in a fresh process each (alternating, `rounds` times),
finds the 4 nearest videos of 4 query videos the way `vidfeat report` does now
(`pipeline.read.neighbours.nearest_videos`, one Parquet part at a time) and the way it did before
(`VideoIndex.from_output(out).search_ids`, every embedding in memory). Prints one JSON line per
measurement (peak RSS of the process, seconds) and checks both give the same neighbours.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import scale_setup as setup  # noqa: E402
from timing import medians  # noqa: E402

WAYS = {
    "part by part": "from pipeline.read.neighbours import nearest_videos as f; hits = f(out, ids, k=4)",
    "whole index": "from pipeline.read.search import VideoIndex; hits = VideoIndex.from_output(out).search_ids(ids, k=4)",
}

CHILD = """
import json, sys, time
out, ids, here = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
start = time.perf_counter()
{way}
seconds = time.perf_counter() - start
sys.path.insert(0, here)
from measure import memory_mib
print(json.dumps({{"seconds": seconds, "ids": hits.ids, "peak_rss_mib": memory_mib()["VmHWM"]}}))
"""


def measure(way: str, out: str, ids: list[str]) -> dict:
    """One fresh process finding the neighbours `way`: its seconds, peak RSS and the hits' ids."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = CHILD.format(way=WAYS[way])
    done = subprocess.run([sys.executable, "-c", code, out, ",".join(ids), here], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": os.path.dirname(here)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=100000)
    ap.add_argument("--per-part", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="vidfeat-report-", dir=args.tmp)
    try:
        out = os.path.join(root, "out")
        setup.synthetic_output(out, args.videos, per_part=args.per_part)
        ids = [f"v{i:08d}" for i in (0, args.videos // 3, 2 * args.videos // 3, args.videos - 1)]
        runs = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                runs[way].append(measure(way, out, ids))
        assert runs["part by part"][0]["ids"] == runs["whole index"][0]["ids"], "the two ways disagree"
        for way, results in runs.items():
            print(json.dumps({"case": "report-gallery", "way": way, "videos": args.videos, "per_part": args.per_part,
                              "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
                              "seconds_median": medians(results, ("seconds",))["seconds"]}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
