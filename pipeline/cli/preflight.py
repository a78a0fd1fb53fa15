"""`vidfeat plan SOURCE`: what a run of this corpus will cost, before it starts.

It reads the manifest, probes a random sample of its videos (default 200, `--sample`; demuxing only,
remote videos spooled as a run would), decodes a few of them (`--decode`, spread over the codecs found)
to measure this machine's decode rate, and estimates, each with its error:
- video hours: exact from a duration column of the manifest (`duration_s`, `duration`, `seconds`) when
  every row has one; else N × the sample's mean duration, with a 95% interval (t-free normal
  approximation, finite-population corrected);
- the mix of containers, codecs, resolutions and frame rates, and the share of videos expected to fail
  (95% Wilson interval) with the reasons seen;
- clips (one per 102.4 s with the default sampling), decode vCPU-hours (each codec's hours times this
  machine's single-core decode seconds per video second), GPU-hours at `--gpu-clips-per-s` (or the best
  batch-4 rate of a GPU check's `gpu_check.json`, `--gpu-check`);
- how many nodes of each `cluster.yaml` type finish by `--deadline` (GPU nodes first; their spare
  cores decode too, decode-only nodes cover the rest).
"""
from __future__ import annotations

import collections
import math
import random
import time
from typing import Sequence

from pipeline.config import Config
from pipeline.corpus import Corpus
from pipeline.errors import DecodeError

Z95 = 1.96
DURATION_COLUMNS = ("duration_s", "duration", "seconds")


def plan(corpus: Corpus, durations: Sequence[float] | None, *, sample: int = 200, decode: int = 4,
         config: Config | None = None, seed: int = 0) -> dict:
    """The preflight report of `corpus` (see the module doc); `durations`: the manifest's, if complete."""
    config = config or Config()
    n = len(corpus)
    rng = random.Random(seed)
    rows = sorted(rng.sample(range(n), min(sample, n)))
    uris = corpus.table.column("uri").to_pylist()
    probes = [_probe(uris[i]) for i in rows]
    ok = [p for p in probes if "error" not in p]
    rates = _decode_rates(ok, decode, config, rng)
    hours = _hours(n, durations, [p["duration_s"] for p in ok], len(probes))
    clip_s = config.sampling.num_frames * config.sampling.stride / config.sampling.target_fps
    clips = _scaled(n, [math.ceil(p["duration_s"] / clip_s) if p["duration_s"] > 0 else 0 for p in ok], len(probes))
    return {"videos": n, "sampled": len(probes), "video_hours": hours, "clips": clips,
            "mix": _mix(ok), "failures": _failures(probes), "decode_s_per_video_s": rates,
            "decode_vcpu_hours": _decode_hours(hours, ok, rates)}


def _probe(uri: str) -> dict:
    from pipeline.decode import probe_video

    try:
        info = probe_video(uri)
    except DecodeError as exc:
        return {"uri": uri, "error": exc.kind, "reason": exc.reason}
    return {"uri": uri, "duration_s": float(info.duration_s), "codec": info.codec, "container": info.format,
            "resolution": f"{info.width}x{info.height}", "fps": round(float(info.fps), 2)}


def _decode_rates(ok: list[dict], count: int, config: Config, rng: random.Random) -> dict[str, dict]:
    """Single-core decode seconds per video second, per codec, from up to `count` sampled videos spread
    over the codecs (the longest of each first); codecs not decoded take the median of the others."""
    by_codec = collections.defaultdict(list)
    for p in ok:
        by_codec[p["codec"]].append(p)
    picks = [max(v, key=lambda p: p["duration_s"]) for v in by_codec.values()][:count]
    rates = {p["codec"]: {"rate": _decode_rate(p, config), "measured_on": 1} for p in picks if p["duration_s"] > 0}
    known = sorted(r["rate"] for r in rates.values())
    for codec in by_codec:
        if codec not in rates and known:
            rates[codec] = {"rate": known[len(known) // 2], "measured_on": 0}
    return rates


def _decode_rate(probe: dict, config: Config) -> float:
    from pipeline.decode import decode_clips

    start = time.perf_counter()
    for _ in decode_clips(probe["uri"], config):
        pass
    return (time.perf_counter() - start) / probe["duration_s"]


def _hours(n: int, durations: Sequence[float] | None, sampled: list[float], probed: int) -> dict:
    if durations is not None:
        total = float(sum(durations)) / 3600
        return {"value": total, "low": total, "high": total, "exact": True}
    return {**{k: v / 3600 for k, v in _scaled(n, sampled, probed).items()}, "exact": False}


def _scaled(n: int, values: list[float], probed: int) -> dict:
    """N × the mean of `values` over the `probed` sample (failed probes count 0), with a 95% interval."""
    m = max(probed, 1)
    padded = list(values) + [0.0] * (probed - len(values))
    mean = sum(padded) / m
    var = sum((v - mean) ** 2 for v in padded) / max(m - 1, 1)
    fpc = math.sqrt(max(n - m, 0) / max(n - 1, 1)) if n > 1 else 0.0
    half = Z95 * math.sqrt(var / m) * fpc * n
    return {"value": mean * n, "low": max(0.0, mean * n - half), "high": mean * n + half}


def _mix(ok: list[dict]) -> dict:
    total = max(len(ok), 1)
    return {key: {str(v): c / total for v, c in collections.Counter(p[key] for p in ok).most_common()}
            for key in ("container", "codec", "resolution", "fps")}


def _failures(probes: list[dict]) -> dict:
    """The share expected to fail (Wilson 95% interval) and the reasons seen."""
    m, bad = len(probes), [p for p in probes if "error" in p]
    p = len(bad) / m if m else 0.0
    centre = (p + Z95 ** 2 / (2 * m)) / (1 + Z95 ** 2 / m) if m else 0.0
    half = (Z95 * math.sqrt(p * (1 - p) / m + Z95 ** 2 / (4 * m * m)) / (1 + Z95 ** 2 / m)) if m else 0.0
    reasons = collections.Counter(b["error"] for b in bad)
    return {"share": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half),
            "reasons": dict(reasons.most_common()), "examples": [{"uri": b["uri"], "reason": b["reason"]}
                                                                 for b in bad[:5]]}


def _decode_hours(hours: dict, ok: list[dict], rates: dict) -> dict:
    """Decode vCPU-hours: the video hours split by codec (the sample's shares of time), each at its rate."""
    time_by_codec = collections.Counter()
    for p in ok:
        time_by_codec[p["codec"]] += p["duration_s"]
    total = sum(time_by_codec.values()) or 1.0
    factor = sum(t / total * rates.get(c, {}).get("rate", 0.0) for c, t in time_by_codec.items())
    return {k: hours[k] * factor for k in ("value", "low", "high")}


def gpu_hours(clips: dict, clips_per_s: float | None) -> dict | None:
    return None if not clips_per_s else {k: v / clips_per_s / 3600 for k, v in clips.items()}


def nodes_by_deadline(report: dict, node_types: dict[str, dict], deadline_h: float) -> dict[str, int]:
    """Nodes of each type (resources {"GPU", "decode"}) so that decoding and inference end by the
    deadline (the high ends of the estimates): GPU nodes for the GPU-hours, decode nodes for the rest."""
    gpu = report.get("gpu_hours")
    need_gpus = gpu["high"] / deadline_h if gpu else 0.0
    need_decoders = report["decode_vcpu_hours"]["high"] / deadline_h
    counts = {}
    gpu_types = {k: v for k, v in node_types.items() if v.get("GPU")}
    for name, res in sorted(gpu_types.items(), key=lambda kv: -kv[1]["GPU"])[:1]:
        counts[name] = math.ceil(need_gpus / res["GPU"]) if need_gpus else 0
        need_decoders -= counts[name] * res.get("decode", 0)
    for name, res in node_types.items():
        if not res.get("GPU") and res.get("decode"):
            counts[name] = max(0, math.ceil(need_decoders / res["decode"]))
            need_decoders = 0
    return counts


# ---------------------------------------------------------------------- the command

def add_plan_arguments(ap) -> None:
    ap.add_argument("source", help="manifest or directory/glob of videos, as for `vidfeat extract`")
    ap.add_argument("--sample", type=int, default=200, help="videos to probe (default 200)")
    ap.add_argument("--decode", type=int, default=4, help="sampled videos to decode for the rate (default 4)")
    ap.add_argument("--gpu-clips-per-s", type=float, help="clips/s of one GPU (else from --gpu-check)")
    ap.add_argument("--gpu-check", help="a GPU check's gpu_check.json: its best batch-4 clips/s")
    ap.add_argument("--deadline", default="8h", help="finish within this: 8h, 90m, 2d (default 8h)")
    ap.add_argument("--cluster", default="cluster.yaml", help="Ray cluster YAML whose node types to size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the report as JSON here")


def cmd_plan(args) -> int:
    import json

    from pipeline.corpus import load_corpus

    corpus = load_corpus(args.source)
    report = plan(corpus, manifest_durations(args.source, len(corpus)), sample=args.sample, decode=args.decode,
                  seed=args.seed)
    report["gpu_clips_per_s"] = args.gpu_clips_per_s or gpu_check_rate(args.gpu_check)
    report["gpu_hours"] = gpu_hours(report["clips"], report["gpu_clips_per_s"])
    report["deadline_h"] = parse_hours(args.deadline)
    report["nodes"] = nodes_by_deadline(report, node_types(args.cluster), report["deadline_h"])
    print(render(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


def manifest_durations(source: str, n: int) -> list[float] | None:
    """The manifest's duration column, when it has one filled for every row."""
    from pipeline.corpus import MANIFEST_EXTENSIONS, _read_table

    if not source.lower().endswith(MANIFEST_EXTENSIONS):
        return None
    table = _read_table(source)
    name = next((c for c in DURATION_COLUMNS if c in table.column_names), None)
    if name is None or table.num_rows != n or table.column(name).null_count:
        return None
    try:
        durations = [float(v) for v in table.column(name).to_pylist()]
    except (TypeError, ValueError):                    # not numbers: estimate from the sample instead
        return None
    return durations if all(math.isfinite(d) and d >= 0 for d in durations) else None


def gpu_check_rate(path: str | None) -> float | None:
    """The best clips/s at batch 4 (else the best of any batch) in a GPU check's JSON."""
    if not path:
        return None
    import json

    with open(path) as fh:
        best = json.load(fh)["sections"]["throughput"]["result"]["best_vs_hf"]
    at4 = [b["clips_per_s"] for b in best if b["batch"] == 4]
    return max(at4 or [b["clips_per_s"] for b in best])


def parse_hours(text: str) -> float:
    units = {"m": 1 / 60, "h": 1.0, "d": 24.0}
    text = text.strip().lower()
    return float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)


def node_types(path: str) -> dict[str, dict]:
    """Node type → its resources ("GPU", "decode") from a Ray cluster YAML; {} when there is none."""
    import os

    import yaml

    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        types = (yaml.safe_load(fh) or {}).get("available_node_types", {})
    return {name: {k: float(v) for k, v in (spec.get("resources") or {}).items() if k in ("GPU", "decode")}
            for name, spec in types.items()}


def render(r: dict) -> str:
    def span(d, fmt="{:,.1f}"):
        return fmt.format(d["value"]) + ("" if d.get("exact") else f" ({fmt.format(d['low'])}–{fmt.format(d['high'])})")
    f = r["failures"]
    lines = [f"{r['videos']:,} videos, {r['sampled']} probed",
             f"video hours: {span(r['video_hours'])}" + (" exact (manifest)" if r["video_hours"]["exact"] else ", 95%"),
             f"clips: {span(r['clips'], '{:,.0f}')}",
             f"expected to fail: {f['share']:.1%} ({f['low']:.1%}–{f['high']:.1%}) {f['reasons'] or ''}",
             f"decode: {span(r['decode_vcpu_hours'])} vCPU-hours at this machine's rates "
             + ", ".join(f"{c} {v['rate']:.3f} s/video-s" for c, v in r["decode_s_per_video_s"].items())]
    lines.append(f"GPU: {span(r['gpu_hours'])} GPU-hours at {r['gpu_clips_per_s']:g} clips/s" if r["gpu_hours"]
                 else "GPU: pass --gpu-clips-per-s or --gpu-check for GPU-hours")
    for key, shares in r["mix"].items():
        lines.append(f"{key}: " + ", ".join(f"{v} {s:.0%}" for v, s in list(shares.items())[:6]))
    if r["nodes"]:
        lines.append(f"by {r['deadline_h']:g} h: " + ", ".join(f"{n} × {t}" for t, n in r["nodes"].items()))
    return "\n".join(lines)
