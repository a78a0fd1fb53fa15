"""What a decode slot holds and how fast it starts; memory of a long video against a short one (by hand).

    python benchmarks/decode_memory.py [--compare ROOT] [--long-hours 3] [--real-run 6]

A decode slot is the process that runs the decode stage plus its watchdog worker process. `slot`
measures it in a fresh process that imports what the decode stage needs (`pipeline.config`,
`pipeline.decode`, `pipeline.decode.transforms`), decodes a 120 s 640×360 video through the default path and
crops each clip as the stage does: import time, the first decode's extra time (the worker starting:
cold minus warm, on a 1 s video), peak RSS (VmHWM) of both processes, and whether torch got loaded.
`--compare ROOT` runs the same in another checkout (e.g. the main branch) for a before/after.
`--long-hours H` decodes a video of H hours (the 3 min one concatenated) against the 3 min one, in
the worker and in-process: memory must not grow with the video.
`--real-run N` runs the pipeline (tiny model, embedded local Ray) on N generated videos while polling
/proc: how many watchdog workers start during the run, and what the Ray process running the decode
stage and its worker hold (RSS now, the peak seen).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from decode_throughput import CLASSES, encode  # noqa: E402
from measure import memory_mib, proc_stat  # noqa: E402

_SLOT_CODE = r"""
import json, os, sys, time
t0 = time.perf_counter()
import numpy as np
from pipeline.config import Config
from pipeline.decode import decode_clips
from pipeline.decode.transforms import crop
imports = time.perf_counter() - t0
try:
    from pipeline.decode.worker import POOL
except ImportError:                                    # before the decode package existed
    from pipeline.decode import _POOL as POOL

def torch_in(pid="self"):
    with open(f"/proc/{pid}/maps") as fh:
        return any("libtorch" in line for line in fh)

tiny, video, timeout, here = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
cfg = Config().replace(decode={"timeout_s": timeout})
try:
    from pipeline.run.decode_stage import decoding_config       # as the stage decodes (one crop: cut in the resize)
    cfg = decoding_config(cfg)
except ImportError:                                         # a checkout from before it (--compare)
    pass
def decode(path):
    t = time.perf_counter()
    for clip in decode_clips(path, cfg):
        np.stack(crop(clip.frames, cfg.preprocess.size, cfg.preprocess.crops))   # what the stage does
    return time.perf_counter() - t
cold = decode(tiny)
warm = decode(tiny)
seconds = decode(video)
worker = POOL.pids()[0] if POOL.pids() else None
sys.path.insert(0, here)                               # for measure.py
from measure import memory_mib as status
print(json.dumps({"imports_s": imports, "cold_s": cold, "warm_s": warm, "worker_start_s": cold - warm,
                  "video_s": seconds, "parent": status(), "worker": status(worker) if worker else None,
                  "torch_in_parent": torch_in(), "torch_in_worker": torch_in(worker) if worker else None}))
"""


def slot(root: str, tiny: str, video: str, timeout_s: float = 600.0) -> dict:
    """The slot measurement in a fresh process running the checkout at `root`."""
    env = {**os.environ, "PYTHONPATH": root}
    here = os.path.join(ROOT, "benchmarks")                 # measure.py: this checkout's, also for --compare
    out = subprocess.run([sys.executable, "-c", _SLOT_CODE, tiny, video, str(timeout_s), here], env=env, cwd=root,
                         check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["slot_peak_mib"] = result["parent"]["VmHWM"] + (result["worker"] or {}).get("VmHWM", 0.0)
    return result


def concatenated(short: str, path: str, copies: int) -> str:
    """`copies` × `short` by stream-copy concatenation (cheap; timestamps continue)."""
    if not os.path.exists(path):
        listing = path + ".txt"
        with open(listing, "w") as fh:
            fh.writelines(f"file '{os.path.abspath(short)}'\n" for _ in range(copies))
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", listing, "-c", "copy",
                        path], check=True)
    return path


def watchdog_workers() -> dict[int, int]:
    """Live watchdog worker processes: pid → parent pid."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"pipeline.decode.watchdog import worker_main" not in fh.read():
                    continue
            found[int(pid)] = int(proc_stat(int(pid))[1])
        except OSError:
            continue
    return found


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a live process, MiB (0, 0 once it is gone)."""
    m = memory_mib(pid)
    return m.get("VmRSS", 0.0), m.get("VmHWM", 0.0)


def pss_mib(pid: int) -> float:
    """Proportional set size of a live process, MiB: shared pages (libraries, the frames' shared memory,
    Ray's object store) divided among the processes mapping them — what one more slot costs a node."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(l.split()[1]) / 1024 for l in fh if l.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0.0


def real_run(workdir: str, videos: int) -> dict:
    """Run the pipeline on `videos` generated videos, polling the decode slots' processes."""
    from pipeline.config import Config
    from pipeline.run.runner import run_extract

    vdir = os.path.join(workdir, "real-run-videos")
    os.makedirs(vdir, exist_ok=True)
    for i in range(videos):
        encode(os.path.join(vdir, f"v{i}.mp4"), 60 + 5 * i, CLASSES["high"][2])
    config = Config.from_preset("tiny", checkpoint="random").replace(
        sampling={"num_frames": 96, "stride": 32, "target_fps": 30.0}, preprocess={"size": 224},
        run={"commit_every": 1})
    seen: dict[int, dict] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for child, parent in watchdog_workers().items():
                rec = seen.setdefault(child, {"parent": parent, "child_hwm": 0.0, "parent_hwm": 0.0, "slot_rss": 0.0,
                                              "slot_pss": 0.0})
                c_rss, c_hwm = rss_mib(child)
                p_rss, p_hwm = rss_mib(parent)
                rec["child_hwm"], rec["parent_hwm"] = max(rec["child_hwm"], c_hwm), max(rec["parent_hwm"], p_hwm)
                rec["slot_rss"] = max(rec["slot_rss"], c_rss + p_rss)
                rec["slot_pss"] = max(rec["slot_pss"], pss_mib(child) + pss_mib(parent))
            time.sleep(0.2)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    start = time.perf_counter()
    summary = run_extract(vdir, os.path.join(workdir, f"real-run-out-{int(time.time())}"), config, progress=False)
    done.set()
    thread.join()
    return {"videos": videos, "ok": summary.ok, "wall_s": time.perf_counter() - start,
            "worker_starts": len(seen), "decode_processes": len({r["parent"] for r in seen.values()}),
            "slots": list(seen.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/vidfeat-bench")
    ap.add_argument("--compare", metavar="ROOT", help="also measure the checkout at ROOT (before/after)")
    ap.add_argument("--long-hours", type=float, default=0.0, help="measure a video this long against 3 min")
    ap.add_argument("--real-run", type=int, default=0, metavar="N", help="pipeline run on N videos")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    tiny = encode(os.path.join(args.workdir, "1s_high.mp4"), 1, CLASSES["high"][2])
    video = encode(os.path.join(args.workdir, "120s_" + CLASSES["high"][1]), 120, CLASSES["high"][2])
    result = {"date": time.strftime("%Y-%m-%d"), "slot": {"this": slot(ROOT, tiny, video)}}
    if args.compare:
        result["slot"]["compare"] = {"root": args.compare, **slot(args.compare, tiny, video)}
    for name, r in result["slot"].items():
        print(f"{name}: imports {r['imports_s']:.2f} s, worker start {r['worker_start_s']:.2f} s, parent peak "
              f"{r['parent']['VmHWM']:.0f} MiB, worker peak {(r['worker'] or {}).get('VmHWM', 0):.0f} MiB, "
              f"slot {r['slot_peak_mib']:.0f} MiB, torch loaded: parent {r['torch_in_parent']}, "
              f"worker {r['torch_in_worker']}", flush=True)
    if args.long_hours:
        short = encode(os.path.join(args.workdir, "180s_high.mp4"), 180, CLASSES["high"][2])
        long = concatenated(short, os.path.join(args.workdir, f"{args.long_hours:g}h_high.mp4"),
                            max(1, round(args.long_hours * 60 / 3)))
        result["long"] = {f"{name} {mode}": slot(ROOT, tiny, path, timeout)["slot_peak_mib"]
                          for name, path in (("3 min", short), (f"{args.long_hours:g} h", long))
                          for mode, timeout in (("worker", 600.0), ("in-process", 0.0))}
        print(json.dumps(result["long"], indent=1))
    if args.real_run:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            result["real_run"] = real_run(tmp, args.real_run)
        r = result["real_run"]
        print(f"real run: {r['ok']}/{r['videos']} videos in {r['wall_s']:.0f} s; {r['worker_starts']} watchdog "
              f"worker starts in {r['decode_processes']} decode processes; slots: "
              + "; ".join(f"Ray process peak {s['parent_hwm']:.0f} + worker peak {s['child_hwm']:.0f} MiB "
                          f"(together at most {s['slot_rss']:.0f} MiB RSS, {s['slot_pss']:.0f} MiB PSS at once)"
                          for s in r["slots"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
