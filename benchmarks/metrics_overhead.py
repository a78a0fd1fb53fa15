"""What the live metrics cost the driver (run by hand).

    python benchmarks/metrics_overhead.py [--updates 20000] [--rounds 3]

The driver calls `RunMetrics.update(summary)` and sets the in-flight gauge once per result block
(pipeline/run/runner.py `_consume`): this times that pair against an embedded Ray on 127.0.0.1, in
microseconds per call, with the summary's counters all moving (the worst case: six counters sent).
Compare it with the driver's cost per video (BENCHMARKS.md "Corpus scale": ~0.8 ms).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def per_update_us(metrics, updates: int) -> float:
    s = SimpleNamespace(ok=0, failed=0, clips=0, video_hours=0.0, decode_s=0.0, infer_s=0.0, bytes_written=0)
    start = time.perf_counter()
    for i in range(updates):
        s.ok, s.clips, s.video_hours, s.decode_s, s.infer_s = s.ok + 1, s.clips + 3, s.video_hours + 0.01, \
            s.decode_s + 0.5, s.infer_s + 0.1
        metrics.update(s)
        metrics.set("videos_in_flight", i % 7)
    return 1e6 * (time.perf_counter() - start) / updates


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    from pipeline.run.cluster import connect_ray
    from pipeline.run.metrics import RunMetrics

    import ray

    connect_ray(None)
    try:
        metrics = RunMetrics("benchmark")
        rounds = [per_update_us(metrics, args.updates) for _ in range(args.rounds)]
    finally:
        ray.shutdown()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: {statistics.median(rounds):.1f} µs per update + gauge "
          f"(rounds: {', '.join(f'{r:.1f}' for r in rounds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
