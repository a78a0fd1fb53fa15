"""Soak: a few hundred tiny videos, the run SIGKILLed at random moments, then finished; nothing lost or doubled.

    python benchmarks/soak.py --videos 300 --kills 5 --seed 0

Each round starts `python -m pipeline extract` (embedded local Ray, tiny preset, random weights, small
parts) in its own process group and kills the whole group with SIGKILL after a random delay. A last
round runs to the end. Reports videos lost and duplicated (both must be 0), `vidfeat verify`'s verdict,
and per round how long the restarted run took to make its first new commit (time to recover).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from pipeline.corpus import read_corpus
from pipeline.read.parts import read_table
from pipeline.store.ledger import Ledger
from pipeline.synthetic.samples import write_index_video, write_random_bytes
from pipeline.read.verify import verify


def make_corpus(root: str, n: int, seed: int) -> str:
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        path = os.path.join(root, f"v{i:04d}.mp4")
        if not os.path.exists(path):
            if i % 50 == 49:
                write_random_bytes(path, seed=i)                       # a few broken ones, as in real corpora
            else:
                write_index_video(path, rng.randint(15, 80), rng.choice([24.0, 25.0, 30.0]))
    return root


def start(source: str, out: str, config: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "pipeline", "extract", source, "--out", out, "--config", config,
                             "--no-progress"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def settled(out: str) -> int:
    """Videos committed so far, done or failed (part records are not a count: compaction merges them)."""
    state = Ledger(out).load()
    return len(state.done) + len(state.failed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--min-delay", type=float, default=20.0, help="seconds before a kill, at least")
    ap.add_argument("--max-delay", type=float, default=45.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vidfeat-soak"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    source = make_corpus(os.path.join(args.workdir, "videos"), args.videos, args.seed)
    out = os.path.join(args.workdir, f"out-{int(time.time())}")
    config = os.path.join(args.workdir, "soak.yaml")
    with open(config, "w") as fh:
        fh.write("model: {preset: tiny, checkpoint: random}\nrun: {commit_every: 8}\n")
    rounds = []
    for _ in range(args.kills + 1):
        before, t0 = settled(out), time.time()
        proc = start(source, out, config)
        first_commit = None
        deadline = t0 + rng.uniform(args.min_delay, args.max_delay) if len(rounds) < args.kills else None
        while proc.poll() is None and (deadline is None or time.time() < deadline):
            if first_commit is None and settled(out) > before:
                first_commit = time.time() - t0
            time.sleep(0.1)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rounds.append({"killed": killed, "seconds": round(time.time() - t0, 1), "exit": proc.returncode,
                       "new_videos": settled(out) - before,
                       "first_commit_s": round(first_commit, 1) if first_commit else None})
        time.sleep(3)                                               # let the killed Ray's workers exit
    ids = [r.video_id for r in read_corpus(source)]
    state = Ledger(out).load()
    in_videos = collections.Counter(read_table(out, "videos", ["video_id"]).column("video_id").to_pylist())
    report = verify(out)
    print(json.dumps({
        "videos": len(ids), "kills": args.kills, "rounds": rounds,
        "done": len(state.done), "failed": len(state.failed),
        "lost": len(set(ids) - state.done - set(state.failed)),
        "duplicated": sum(1 for n in in_videos.values() if n > 1),
        "verify_ok": report["ok"], "verify_problems": report["problems"][:10],
    }, indent=2))


if __name__ == "__main__":
    main()
