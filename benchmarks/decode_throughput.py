"""Decode throughput and memory of `pipeline.decode` against decord and the ffmpeg CLI (run by hand).

    python benchmarks/decode_throughput.py [--workdir DIR] [--minutes 3] [--hours 3] [--skip-long]

Generates 640×360 H.264 test videos with B-frames (x264 defaults: 3 B-frames, b-pyramid, keyint 250) with
the ffmpeg CLI, then reports for the default sampling (one frame every 32/30 s, short side to 224):
  * sampled frames per wall second and video seconds per CPU second (one decoder thread everywhere),
    best of `--rounds` interleaved rounds (every case once per round),
  * for our default, exact and fast modes, in-process and through the watchdog worker,
  * for decord `get_batch` on the same indices (decord resizing in its decoder to the same size),
  * for `ffmpeg -skip_frame bidir|noref -f null -` and a full `ffmpeg -f null -` decode as limits,
  * the peak RSS of decoding a short and a long video (the long one concatenated by stream copy).
Results are printed as a Markdown table and as JSON (`--json PATH`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.clips import plan_clips  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.decode import decode_clips, probe_video  # noqa: E402


def make_video(path: str, seconds: float, bpyramid: str = "normal", keyint: int = 250) -> str:
    """640×360 30 fps H.264 (x264 defaults, crf 23) of moving test pattern plus temporal noise.
    `bpyramid` "normal" (x264's default: some B-frames are references) or "none"; `keyint` the longest
    GOP (x264's default 250; streaming encodes often use 2 s, 60 frames)."""
    if not os.path.exists(path):
        src = f"testsrc2=size=640x360:rate=30:duration={seconds},noise=alls=6:allf=t"
        _run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-c:v", "libx264", "-preset", "fast",
              "-crf", "23", "-x264-params", f"b-pyramid={bpyramid}:keyint={keyint}", "-pix_fmt", "yuv420p",
              path])
    return path


def make_long(short: str, path: str, copies: int) -> str:
    """`copies` × `short` by stream-copy concatenation (cheap; timestamps continue)."""
    if not os.path.exists(path):
        listing = path + ".txt"
        with open(listing, "w") as fh:
            fh.writelines(f"file '{os.path.abspath(short)}'\n" for _ in range(copies))
        _run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", listing, "-c", "copy", path])
    return path


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True)


def cpu_seconds(pids: list[int] = ()) -> float:
    """User+system CPU of this process, its reaped children, and the live processes `pids`."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def worker_pids() -> list[int]:
    from pipeline.decode.worker import POOL

    return POOL.pids()


def timed(fn, pids) -> tuple[float, float]:
    """(wall, CPU) seconds of one call of `fn`; CPU includes the live processes `pids()` (the worker)."""
    before_pids = pids()
    cpu0, t0 = cpu_seconds(before_pids), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_seconds(before_pids) - cpu0


def summarise(label: str, runs: list[tuple[float, float]], video_s: float, samples: int) -> dict:
    """Best run by wall time (its CPU time alongside): shared machines are noisy, and the best of several
    interleaved rounds is the least disturbed one."""
    wall, cpu = min(runs)
    row = {"what": label, "wall_s": wall, "cpu_s": cpu, "sampled_fps": samples / wall,
           "video_s_per_cpu_s": video_s / cpu, "walls": [r[0] for r in runs]}
    print(f"  {label:<44} wall {wall:7.2f} s  cpu {cpu:7.2f} s  {samples / wall:8.1f} frames/s  "
          f"{video_s / cpu:7.1f} video-s/cpu-s   (walls: {', '.join(f'{r[0]:.2f}' for r in runs)})",
          flush=True)
    return row


def ours(path: str, config: Config) -> None:
    for clip in decode_clips(path, config):
        assert clip.frames.dtype.name == "uint8"


def decord_get_batch(path: str, config: Config) -> None:
    import decord

    info = probe_video(path)
    short = config.preprocess.size
    width = int(info.width / info.height * short) if info.width >= info.height else short
    height = short if info.width >= info.height else int(info.height / info.width * short)
    reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    for spec in plan_clips(info.timestamps, info.duration_s, config.sampling):
        reader.get_batch(list(spec.frame_indices)).asnumpy()


def ffmpeg_null(path: str, skip: str | None) -> None:
    cmd = ["ffmpeg", "-v", "error", "-threads", "1"]
    if skip:
        cmd += ["-skip_frame", skip]
    _run(cmd + ["-i", path, "-f", "null", "-"])


def throughput(path: str, threads: int = 1, rounds: int = 5) -> list[dict]:
    import torch

    torch.set_num_threads(1)            # the in-process runs resize with one thread, like the worker
    info = probe_video(path)
    base = Config().replace(decode={"threads": threads})
    samples = sum(c.valid_frames for c in plan_clips(info.timestamps, info.duration_s, base.sampling))
    in_proc = {"timeout_s": 0}
    ours(path, base)                    # start the worker and warm the page cache
    print(f"{path}: {info.duration_s:.0f} s, {info.num_frames} frames, {samples} samples")
    cases = [
        (f"ours default ({base.decode.backend}/{base.decode.mode}, worker)", lambda: ours(path, base), worker_pids),
        *[(f"ours {mode} (worker)", lambda mode=mode: ours(path, base.replace(decode={"mode": mode})), worker_pids)
          for mode in ("exact", "fast") if (base.decode.backend, base.decode.mode) != ("pyav", mode)],
        ("ours exact (in-process)", lambda: ours(path, base.replace(decode={**in_proc, "mode": "exact"})), list),
        ("ours fast (in-process)", lambda: ours(path, base.replace(decode={**in_proc, "mode": "fast"})), list),
        ("ours decord backend (worker)", lambda: ours(path, base.replace(decode={"backend": "decord"})),
         worker_pids),
        ("decord get_batch, decoder resize", lambda: decord_get_batch(path, base), list),
        ("ffmpeg -skip_frame bidir -f null", lambda: ffmpeg_null(path, "bidir"), list),
        ("ffmpeg -skip_frame noref -f null", lambda: ffmpeg_null(path, "noref"), list),
        ("ffmpeg full decode -f null", lambda: ffmpeg_null(path, None), list),
    ]
    runs: list[list[tuple[float, float]]] = [[] for _ in cases]
    for _ in range(rounds):             # round-robin, so a slow spell of the machine hits every case alike
        for i, (_, fn, pids) in enumerate(cases):
            runs[i].append(timed(fn, pids))
    rows = [summarise(label, r, info.duration_s, samples) for (label, _, _), r in zip(cases, runs)]
    by = {row["what"]: row for row in rows}
    default, decord_row = rows[0], by["decord get_batch, decoder resize"]
    for name, row in (("default", default), ("exact (in-process)", by["ours exact (in-process)"]),
                      ("fast (in-process)", by["ours fast (in-process)"])):
        print(f"  {name}: {decord_row['wall_s'] / row['wall_s']:.2f}x decord get_batch (wall), "
              f"{decord_row['cpu_s'] / row['cpu_s']:.2f}x (CPU); "
              f"{row['wall_s'] / by['ffmpeg -skip_frame bidir -f null']['wall_s']:.2f}x the time of bidir, "
              f"{row['wall_s'] / by['ffmpeg -skip_frame noref -f null']['wall_s']:.2f}x the time of noref")
    return rows


_RSS_CODE = """
import sys
from pipeline.config import Config
from pipeline.decode import decode_clips
def hwm(pid="self"):  # peak RSS of this address space (ru_maxrss would include the forking parent's)
    with open(f"/proc/{pid}/status") as fh:
        return max(int(l.split()[1]) for l in fh if l.startswith("VmHWM"))
base = hwm()
cfg = Config().replace(decode={"timeout_s": float(sys.argv[2])})
n = sum(1 for _ in decode_clips(sys.argv[1], cfg))
from pipeline.decode.worker import POOL
print(n, hwm(), max([hwm(pid) for pid in POOL.pids()] + [0]), base)
"""


def peak_rss(path: str, timeout_s: float) -> dict:
    """Peak RSS (MiB) of a fresh process decoding `path` (and of its worker when timeout_s > 0)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _RSS_CODE, path, str(timeout_s)], check=True, cwd=root,
                         capture_output=True, text=True).stdout.split()
    return {"clips": int(out[0]), "parent_mib": int(out[1]) / 1024, "worker_mib": int(out[2]) / 1024,
            "parent_after_imports_mib": int(out[3]) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/vidfeat-bench")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--skip-long", action="store_true", help="skip the long-video memory measurement")
    ap.add_argument("--bpyramid", default="normal", choices=["normal", "none"], help="x264 b-pyramid")
    ap.add_argument("--keyint", type=int, default=250, help="x264 keyint (longest GOP, frames)")
    ap.add_argument("--skip-throughput", action="store_true", help="only the memory measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best of them is reported")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    suffix = ("" if args.bpyramid == "normal" else "_nopyramid") + ("" if args.keyint == 250 else f"_g{args.keyint}")
    short = make_video(os.path.join(args.workdir, f"v{args.minutes:g}min{suffix}.mp4"), args.minutes * 60,
                       args.bpyramid, args.keyint)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d")}
    if not args.skip_throughput:
        result["throughput"] = throughput(short, rounds=args.rounds)
    if not args.skip_long:
        copies = max(1, round(args.hours * 60 / args.minutes))
        long = make_long(short, os.path.join(args.workdir, f"v{args.hours:g}h.mp4"), copies)
        result["rss"] = {name: {"worker": peak_rss(p, 600), "in_process": peak_rss(p, 0)}
                         for name, p in (("short", short), ("long", long))}
        print(json.dumps(result["rss"], indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
