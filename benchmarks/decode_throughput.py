"""Decode throughput of `pipeline.decode` against today's peers, the faithful limit and the floor (run by hand).

    python benchmarks/decode_throughput.py [--seconds 120] [--rounds 3] [--classes baseline,main,...]
        [--peer-path decord=/dir/with/decord06 --peer-path decord2=/dir/with/decord2 ...] [--json PATH]

Per encode class (generated here with the ffmpeg CLI, 640×360 30 fps, moving test pattern plus noise):
  baseline  x264 Baseline, keyint 60 (like YouTube 360p)
  main      x264 Main, 2 B-frames (no pyramid), keyint 60
  high      x264 High, 3 B-frames, b-pyramid, keyint 250 (preset fast)
  x264      x264's own defaults (preset medium, crf 23: 3 B-frames b-pyramid, keyint 250, 3 refs)
  vp9       VP9 (libvpx), keyint 120
every case decodes the default sampling's frames (one every 32/30 s, short side to 224), one thread each:
our default (in its worker, already started), torchcodec (exact seek), decord 0.6, decord2, the
official-style PyAV decode (`decode_peers.py` says what each does), and the faithful limit, the ffmpeg
CLI decoding to `-f null`: with `-skip_frame noref` for H.264/HEVC with B-frames (every reference frame,
none of the others: a decoder that returns the sampled B-frames cannot do less), a full decode otherwise.
The limit leaves out work a decode task cannot: the sampled frames that are not reference frames, and
the resize of every sampled frame; it also decodes GOP tails no sample needs. The floor
(`decode_floor.py`, in its own process) does exactly that work and nothing else: the reference frames
from each sampled frame's restart point up to it, the sampled non-reference frames (the decoded frames
are counted and must be exactly those), and each distinct sampled frame converted to RGB and resized —
whole (`floor`, against `ours`) or only the centre crop (`floor_crop`, against `ours_crop`).
Peers run in their own processes (decord and decord2 share an import name: each gets its own
PYTHONPATH entry, `--peer-path NAME=DIR`; a peer whose package is missing is skipped), every case pinned
to one core (`--cpu`; torchcodec's resize filter runs threads of its own otherwise). Rounds are
interleaved (every case once per class per round, in an order rotated each round, so a slow spell of the
machine hits all alike); the tables give the median wall seconds per video, ours against the fastest
peer and the limit, and ours against the floor and the limit as the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from measure import cpu_seconds  # noqa: E402
from timing import medians  # noqa: E402
from pipeline.decode.clips import plan_clips  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.decode import probe_video  # noqa: E402
from pipeline.decode.transforms import resized_shape  # noqa: E402

CLASSES = {   # name: (label, file name, ffmpeg encoder arguments, limit's skip_frame)
    "baseline": ("x264 Baseline, keyint 60", "baseline_g60.mp4",
                 ["-c:v", "libx264", "-preset", "fast", "-crf", "23", "-profile:v", "baseline",
                  "-x264-params", "keyint=60"], None),
    "main": ("x264 Main, 2 B-frames, keyint 60", "main_b2_g60.mp4",
             ["-c:v", "libx264", "-preset", "fast", "-crf", "23", "-profile:v", "main",
              "-x264-params", "bframes=2:b-pyramid=none:keyint=60"], "noref"),
    "high": ("x264 High, 3 B-frames b-pyramid, keyint 250", "high_b3pyr_g250.mp4",
             ["-c:v", "libx264", "-preset", "fast", "-crf", "23", "-profile:v", "high",
              "-x264-params", "bframes=3:b-pyramid=normal:keyint=250"], "noref"),
    "x264": ("x264's defaults (preset medium: 3 B-frames b-pyramid, keyint 250)", "x264_defaults.mp4",
             ["-c:v", "libx264", "-crf", "23"], "noref"),
    "vp9": ("VP9, keyint 120", "vp9_g120.webm",
            ["-c:v", "libvpx-vp9", "-g", "120", "-crf", "34", "-b:v", "0", "-deadline", "good",
             "-cpu-used", "5", "-row-mt", "1"], None),
}
PEERS = ("ours", "torchcodec", "torchcodec_torch", "decord", "decord2", "pyav_official",
         "ours_crop", "ours_float32")   # the last two only on request
OURS = ("ours", "ours_crop", "ours_float32")
OFFICIAL_PIXELS = ("pyav_official", "torchcodec_torch")   # peers that resize with torch, as ours does


def make_video(workdir: str, name: str, seconds: float) -> str:
    """The benchmark video of encode class `name`, `seconds` long (made once, then reused)."""
    _, filename, encoder, _ = CLASSES[name]
    return encode(os.path.join(workdir, f"{seconds:g}s_{filename}"), seconds, encoder)


def encode(path: str, seconds: float, encoder: list[str] = CLASSES["high"][2]) -> str:
    """640×360 30 fps moving test pattern plus temporal noise, encoded with `encoder` (ffmpeg CLI
    arguments; default: x264's defaults), written atomically, skipped when `path` exists."""
    if not os.path.exists(path):
        part = path + ".part" + os.path.splitext(path)[1]
        src = f"testsrc2=size=640x360:rate=30:duration={seconds},noise=alls=6:allf=t"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src, *encoder, "-pix_fmt", "yuv420p",
                        part], check=True)
        os.replace(part, path)
    return path


class Peer:
    """A decoder in its own process (`decode_peers.py`, or `script` with `module` as its arguments),
    started once and asked once per round."""

    def __init__(self, name: str, module: str, path_entry: str | None, script: str = "decode_peers.py"):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (path_entry, ROOT, env.get("PYTHONPATH")) if p)
        self.name = name
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "benchmarks", script), *module.split()],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.version = json.loads(self.proc.stdout.readline())["version"]

    def run(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer {self.name} died (exit status {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def ffmpeg_limit(path: str, skip: str | None) -> dict:
    cmd = ["ffmpeg", "-v", "error", "-threads", "1", *(["-skip_frame", skip] if skip else []), "-i", path,
           "-f", "null", "-"]
    cpu = os.environ.get("BENCH_CPU")
    before = cpu_seconds(children=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, preexec_fn=(lambda: os.sched_setaffinity(0, {int(cpu)})) if cpu else None)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "cpu_s": cpu_seconds(children=True) - before}


def request_for(path: str, config: Config) -> dict:
    info = probe_video(path)
    plan = plan_clips(info.timestamps, info.duration_s, config.sampling)
    return {"path": path, "clips": [list(map(int, c.frame_indices)) for c in plan],
            "size": list(resized_shape(info.height, info.width, config.preprocess.size))}


IMPORTS = {"torchcodec": "torchcodec", "torchcodec_torch": "torchcodec", "decord": "decord",
           "decord2": "decord"}                     # peer → module it needs


def importable(module: str, entry: str | None) -> bool:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (entry, ROOT) if p)}
    return subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True).returncode == 0


def start_peers(paths: dict[str, str], wanted: set[str]) -> dict[str, Peer]:
    """The wanted peers whose packages import; `paths` maps a peer to the PYTHONPATH entry holding it
    (decord2 runs only from its own entry: it has decord's import name)."""
    peers = {}
    for name in (n for n in PEERS if n in wanted):
        entry = paths.get(name) or (paths.get("torchcodec") if name == "torchcodec_torch" else None)
        if name in IMPORTS and (not importable(IMPORTS[name], entry) or (name == "decord2" and not entry)):
            print(f"skipping {name}: not importable (give --peer-path {name}=DIR)")
            continue
        peers[name] = Peer(name, "decord" if name.startswith("decord") else name, entry)
    return peers


def floor_cases(floor: Peer | None, peers: dict[str, Peer]) -> dict:
    """The floor's cases: `floor` (whole frames, against ours), `floor_crop` (against ours_crop, if it runs)."""
    if floor is None:
        return {}
    cases = {"floor": lambda req: floor.run({**req, "crop": False})}
    if "ours_crop" in peers:
        cases["floor_crop"] = lambda req: floor.run({**req, "crop": True})
    return cases


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, all cores, in clock ticks (/proc/stat)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)        # idle and iowait are not busy


def measure(videos: dict[str, str], peers: dict[str, Peer], floor: Peer | None, rounds: int, config: Config
            ) -> tuple[dict, dict]:
    """Every case's answers per class ({class: {case: [one per round]}}), and how busy the whole machine
    was while each class's round ran ({class: [busy fraction of all cores, one per round]}: this run's one
    pinned core alone is 1 / cores; the rest is other work)."""
    requests = {c: request_for(p, config) for c, p in videos.items()}
    cases = {**{n: p.run for n, p in peers.items()}, **floor_cases(floor, peers)}
    for c, req in requests.items():                  # warm up: page cache, our worker, lazy imports, floor plans
        for run in cases.values():
            run(req)
    runs: dict[str, dict[str, list[dict]]] = {c: {} for c in videos}
    busy: dict[str, list[float]] = {c: [] for c in videos}
    for r in range(rounds):
        for c, req in requests.items():
            order = [*cases.items(), ("limit", lambda req, skip=CLASSES[c][3]: ffmpeg_limit(req["path"], skip))]
            order = order[r % len(order):] + order[:r % len(order)]     # rotate: no case always runs first
            before = machine_jiffies()
            for name, run in order:
                runs[c].setdefault(name, []).append(run(req))
            after = machine_jiffies()
            busy[c].append((after[0] - before[0]) / max(after[1] - before[1], 1))
            print(f"round {r + 1}/{rounds} {c}: " + "  ".join(f"{n} {v[-1]['wall_s']:.2f}" for n, v in runs[c].items())
                  + f"  (machine {busy[c][-1]:.0%} busy)", flush=True)
    return runs, busy


RATIOS = (("ours", "floor"), ("ours", "limit"), ("ours_crop", "floor_crop"), ("ours_crop", "limit"),
          ("floor", "limit"), ("floor_crop", "limit"))        # (case, against): reported per round
FLOOR_PARTS = ("convert_s", "resize_s", "probe_s")          # the floor's own split, and a probe's time


def per_round(cases: dict[str, list[dict]], a: str, b: str) -> dict:
    """Wall-time ratios a ÷ b of the same rounds: their median and range, the ratio of the medians, and the
    median of the CPU-time ratios (less sensitive to other work on the machine than wall time)."""
    ratios = [x["wall_s"] / y["wall_s"] for x, y in zip(cases[a], cases[b])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "of_medians": statistics.median(x["wall_s"] for x in cases[a])
            / statistics.median(y["wall_s"] for y in cases[b]), "rounds": [round(r, 3) for r in ratios],
            "cpu_median": statistics.median(x["cpu_s"] / y["cpu_s"] for x, y in zip(cases[a], cases[b]))}


def floor_summary(cases: dict[str, list[dict]]) -> dict:
    """Per floor case: its counts, medians of its parts, and whether its first clip has ours' pixels."""
    out = {}
    for name, ours in (("floor", "ours"), ("floor_crop", "ours_crop")):
        if name in cases:
            runs = cases[name]
            out[name] = {"counts": runs[0]["counts"], **medians(runs, FLOOR_PARTS),
                         "first_clip_identical_to_ours": runs[0]["checksum"] == cases[ours][0]["checksum"]}
    return out


def summarise(runs: dict) -> dict:
    out = {}
    for c, cases in runs.items():
        med = {n: {**medians(v, ("wall_s", "cpu_s")), "walls": [round(x["wall_s"], 3) for x in v]}
               for n, v in cases.items()}
        peers = {n: m["wall_s"] for n, m in med.items() if n not in (*OURS, "limit", "floor", "floor_crop")}
        fastest = min(peers, key=peers.get) if peers else None
        sums = {n: v[0].get("checksum") for n, v in cases.items() if n in ("ours", *OFFICIAL_PIXELS)}
        out[c] = {"median": med, "fastest_peer": fastest,
                  "first_clip_identical_to_official": len(set(sums.values())) == 1 if len(sums) > 1 else None,
                  **{f"{n}_vs_fastest_peer": med[n]["wall_s"] / peers[fastest] if fastest else None
                     for n in OURS if n in med},
                  **{f"{n}_vs_limit": med[n]["wall_s"] / med["limit"]["wall_s"] for n in OURS if n in med},
                  "ours_cpu_vs_limit_cpu": med["ours"]["cpu_s"] / med["limit"]["cpu_s"],
                  "per_round": {f"{a}/{b}": per_round(cases, a, b) for a, b in RATIOS if a in cases and b in cases},
                  **floor_summary(cases)}
    return out


def print_table(summary: dict, peers: dict[str, Peer]) -> None:
    print("\npeers: " + ", ".join(f"{n} {p.version}" for n, p in peers.items()))
    cols = [n for n in (*PEERS, "limit") if n in peers or n == "limit"]
    extra = [n for n in OURS[1:] if n in peers]           # our other settings against the same peers
    print("\n| encode class | " + " | ".join(cols) + " | ours ÷ fastest peer | ours ÷ limit (wall, CPU) | "
          + "".join(f"{n} ÷ fastest peer, ÷ limit | " for n in extra) + "first clip = official pixels |")
    print("|---|" + "---|" * (len(cols) + 3 + len(extra)))
    for c, s in summary.items():
        cells = [f"{s['median'][n]['wall_s']:.2f}" if n in s["median"] else "–" for n in cols]
        peer = f"{s['ours_vs_fastest_peer']:.2f}× ({s['fastest_peer']})" if s["fastest_peer"] else "–"
        others = "".join(f"{_times(s[n + '_vs_fastest_peer'])}, {s[n + '_vs_limit']:.2f}× | " for n in extra)
        same = {True: "yes", False: "NO", None: "–"}[s["first_clip_identical_to_official"]]
        print(f"| {CLASSES[c][0]} | " + " | ".join(cells) + f" | {peer} | {s['ours_vs_limit']:.2f}×, "
              f"{s['ours_cpu_vs_limit_cpu']:.2f}× | {others}{same} |")


def _times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def print_floor_table(summary: dict) -> None:
    """Ours against the floor and the limit: medians of the per-round wall-time ratios (their range), and of
    the CPU-time ratios."""
    if not all("floor" in s for s in summary.values()):
        return
    pairs = [p for p in (f"{a}/{b}" for a, b in RATIOS) if all(p in s["per_round"] for s in summary.values())]
    cases = [n for n in ("ours", "ours_crop", "floor", "floor_crop", "limit")
             if all(n in s["median"] for s in summary.values())]
    print("\nper-round ratios, wall: median (range), CPU: median:\n| encode class | " + " | ".join(cases) + " | "
          + " | ".join(p.replace("/", " ÷ ") for p in pairs) + " | floor decodes (refs + sampled non-ref) of |"
          " floor: convert, resize, probe (s) | floor pixels = ours |")
    print("|---|" + "---|" * (len(cases) + len(pairs) + 3))
    for c, s in summary.items():
        k = s["floor"]["counts"]
        cells = [f"{s['median'][n]['wall_s']:.2f}" for n in cases]
        cells += [f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f}), CPU {r['cpu_median']:.2f}×"
                  for r in (s["per_round"][p] for p in pairs)]
        cells.append(f"{k['decoded']} ({k['references_decoded']} + {k['sampled_nonref']}) of {k['frames']}")
        cells.append(f"{s['floor']['convert_s']:.2f}, {s['floor']['resize_s']:.2f}, {s['floor']['probe_s']:.2f}")
        cells.append(", ".join(f"{'yes' if s[n]['first_clip_identical_to_ours'] else 'NO'}"
                               for n in ("floor", "floor_crop") if n in s))
        print(f"| {CLASSES[c][0]} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/vidfeat-bench")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--peers", default=",".join(PEERS[:-2]),
                    help="which peers to run (ours always runs; ours_crop: with the centre crop in the resize, as the "
                         "pipeline runs with one crop; ours_float32: our exact-preprocessing setting)")
    ap.add_argument("--peer-path", action="append", default=[], metavar="NAME=DIR",
                    help="PYTHONPATH entry for one peer, e.g. decord=/opt/decord06 decord2=/opt/decord2")
    ap.add_argument("--cpu", type=int, default=os.cpu_count() - 1,
                    help="the core every case is pinned to (-1: none); torchcodec's filters and decord "
                         "start threads of their own, one core keeps 'one thread each' true")
    ap.add_argument("--no-floor", action="store_true", help="leave out the floor (`decode_floor.py`)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    if args.cpu >= 0:
        os.environ["BENCH_CPU"] = str(args.cpu)     # read by the peers and the limit
    os.makedirs(args.workdir, exist_ok=True)
    classes = args.classes.split(",")
    videos = {c: make_video(args.workdir, c, args.seconds) for c in classes}
    paths = dict(p.split("=", 1) for p in args.peer_path)
    peers = start_peers(paths, set(args.peers.split(",")) | {"ours"})
    floor = None if args.no_floor else Peer("floor", "", None, script="decode_floor.py")
    try:
        runs, busy = measure(videos, peers, floor, args.rounds, Config())
    finally:
        for peer in [*peers.values(), *([floor] if floor else [])]:
            peer.close()
    summary = summarise(runs)
    print_table(summary, peers)
    print_floor_table(summary)
    print("\nmachine busy while each round ran (all cores; this run's pinned core alone is "
          f"{1 / os.cpu_count():.0%}): " + "; ".join(f"{c} " + " ".join(f"{b:.0%}" for b in v) for c, v in busy.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                       "date": time.strftime("%Y-%m-%d"), "seconds": args.seconds, "rounds": args.rounds,
                       "versions": {n: p.version for n, p in peers.items()}, "summary": summary, "runs": runs,
                       "machine_busy": busy},
                      fh, indent=1)


if __name__ == "__main__":
    main()
