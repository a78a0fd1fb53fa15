"""What fencing and storage deadlines cost: a commit with and without its fence check, a writer's claim,
and a ledger load through the guarded file system against the bare one — on local disk and on moto's S3.

    python benchmarks/commit_protocol.py [--s3] [--parts 1000] [--rounds 7]

Each round runs every variant once, in turn (this machine's speed drifts: compare within a round, report
medians of the per-round values and their ratio). Results print as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from measure import moto_s3  # noqa: E402
from timing import medians  # noqa: E402

from pipeline.store.commit import write_part  # noqa: E402
from pipeline.store.ledger import Ledger  # noqa: E402

PROV = {"checkpoint_sha256": "x", "preset": "tiny", "sampling": "96x32@30fps", "preprocessing": "p", "decode": "d",
        "fingerprint": "f", "schema_version": 1, "code_version": "0", "run_id": "bench"}


def part(n: int = 64, dim: int = 768, classes: int = 1059):
    """A part of `n` one-clip videos with the real model's sizes."""
    rng = np.random.default_rng(0)
    videos, clips = [], {}
    for i in range(n):
        vid = f"v{i}"
        emb, logits = rng.normal(size=dim).astype(np.float32), rng.normal(size=classes).astype(np.float32)
        clips[vid] = [{"video_id": vid, "clip_index": 0, "start_s": 0.0, "end_s": 102.4, "valid_frames": 96,
                       "frame_indices": list(range(96)), "embedding": emb, "logits": logits}]
        videos.append({"video_id": vid, "uri": f"/{vid}.mp4", "num_clips": 1, "duration_s": 100.0, "embedding": emb,
                       "logits": logits, "probs": np.full(classes, 1 / classes, np.float32), **PROV})
    return videos, clips


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def commit_round(out: str, videos, clips, seq: int) -> dict[str, float]:
    """One fenced commit (a claimed writer) and one unfenced (a ledger that never claimed)."""
    fenced, bare = Ledger(out), Ledger(out)
    fenced.claim()
    names = {"fenced": f"part-f-{seq:05d}", "unfenced": f"part-u-{seq:05d}"}
    return {kind: timed(lambda: (write_part(led, names[kind], videos, clips, [], PROV),
                                 led.record(names[kind], [v["video_id"] for v in videos], [])))
            for kind, led in (("fenced", fenced), ("unfenced", bare))}


def load_round(out: str) -> dict[str, float]:
    guarded, bare = Ledger(out), Ledger(out)
    bare.fs = bare.fs.fs
    return {"guarded": timed(guarded.load), "bare": timed(bare.load), "claim": timed(Ledger(out).claim)}


def fill(out: str, parts: int) -> None:
    ledger = Ledger(out)
    for p in range(parts):
        ledger.record(f"part-a-{p:05d}", [f"a{p}-{i}" for i in range(64)], [])
    ledger.fold()


def medians_ms(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: seconds * 1000 for k, seconds in medians(rounds).items()}


def run(root: str, args, store: str) -> None:
    videos, clips = part()
    rounds = [commit_round(f"{root}/commits", videos, clips, i) for i in range(args.rounds)]
    m = medians_ms(rounds)
    print(json.dumps({"case": "commit", "store": store, "fenced_ms": round(m["fenced"], 1),
                      "unfenced_ms": round(m["unfenced"], 1), "ratio": round(m["fenced"] / m["unfenced"], 3)}))
    fill(f"{root}/ledger", args.parts)
    rounds = [load_round(f"{root}/ledger") for _ in range(args.rounds)]
    m = medians_ms(rounds)
    print(json.dumps({"case": "load", "store": store, "parts": args.parts, "guarded_ms": round(m["guarded"], 1),
                      "bare_ms": round(m["bare"], 1), "ratio": round(m["guarded"] / m["bare"], 3),
                      "claim_ms": round(m["claim"], 1)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--s3", action="store_true")
    ap.add_argument("--parts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if args.s3:
        with moto_s3("bench") as s3:
            run(s3.root, args, "moto-s3")
        return
    root = tempfile.mkdtemp(prefix="vidfeat-bench-")
    try:
        run(root, args, "local")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
