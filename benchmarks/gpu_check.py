"""GPU check: one prepared command that measures the whole GPU path and writes JSON and Markdown.

    python benchmarks/gpu_check.py OUT_DIR [--budget-s 300] [--only a,b] [--smoke]

Sections, in this order (a failing section records its error and the next one runs; OUT_DIR/gpu_check.json
and OUT_DIR/gpu_check.md are rewritten after every section, so a killed run keeps what it measured):
  env           the machine (GPU, driver, versions, cores) and its ceilings: bf16 matmul, device copy
  nvdec         whether the driver's video decode library (libnvcuvid) loads; which GPU decoders import
  precision     bf16 autocast (and our bf16 variants, HF's) vs fp32 at the preset's clip shape: relative
                error of CLS and logits
  throughput    clips/s, TFLOP/s and peak memory of ours (eager, bf16 weights, compiled, CUDA graphs) vs
                HF transformers holding the same weights, same input, batch 1/2/4/8
  embed         ClipEmbedder.embed fed uint8 host frames as Ray hands them (one read-only array over a
                shared buffer), vs the bare model
  profile       torch.profiler at batch 4 (~10 s): GPU time in GEMMs, attention and element-wise kernels,
                the top kernels, and which SDPA operator ran for the temporal and the spatial attention
  max_batch     the largest batch that fits in GPU memory (ours, the pipeline's default path), below the
                fused attention kernels' limit (pipeline/model/limits.py)
  sdpa          which SDPA backend runs for the temporal and the spatial attention; each backend's time
                when forced (last of the model sections: a forced backend that breaks CUDA spoils no other)
  cpu_decode    video-seconds/s of N parallel `decode_clips` processes (N = cores) on generated 640×360 H.264
  nvdec_decode  video-seconds/s of a carried GPU decoder (PyNvVideoCodec, torchcodec) at 1/32 sampling
Each section gets a share of `--budget-s` and sizes its iterations to it (fewer when a step is slow, down
to one); a compile that cannot finish in the time left is skipped and says so. A watchdog ends the run
at the budget plus `GRACE_S` whatever a section is doing, recording that section as timed out, so the
device command's timeout is never what stops it. The decode sections are skipped, and say why, when PyAV
(a carried wheel) does not import; the model sections need nothing carried.
`--smoke` runs every section on the CPU with the tiny preset and a short video (CI runs it so that the
script never rots; its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gpu_decode_checks as decode_checks  # noqa: E402
import gpu_model_checks as model_checks  # noqa: E402
import gpu_speed_checks as speed_checks  # noqa: E402
from gpu_report import markdown, targets  # noqa: E402
from timing import iterations  # noqa: E402

TARGET_PRESET = "timesformer-l-howto100m"
DEFAULT_BUDGET_S = 210.0         # with GRACE_S and the CUDA tests, one device run stays under 6 minutes
GRACE_S = float(os.environ.get("GPU_CHECK_GRACE_S", 30))   # past the budget, the watchdog ends the run


@dataclass
class Context:
    """What every section gets: the run's settings, its clock and a cache of built models and files."""
    smoke: bool
    device: torch.device
    preset: str
    batches: tuple[int, ...]
    workdir: str
    out: str
    end: float                               # the whole run's deadline (perf_counter seconds)
    section_end: float = 0.0
    cache: dict[str, Any] = field(default_factory=dict)    # built models and compiled forwards
    notes: dict[str, Any] = field(default_factory=dict)    # small facts later sections use (video, timings)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16

    def left(self) -> float:
        """Seconds left to the current section (its share, and never past the run's deadline)."""
        return max(0.0, min(self.section_end, self.end) - time.perf_counter())

    def iters(self, round_s: float, seconds: float, lo: int = 3, hi: int = 20) -> int:
        """Timed rounds of `round_s` that fit in `seconds`: within [lo, hi] when lo fit, else as many as
        fit and at least one (the minimum never outruns the budget); 2 in a smoke run."""
        if self.smoke:
            return 2
        fit = iterations(round_s, seconds, 1, hi)
        return fit if fit < lo else iterations(round_s, seconds, lo, hi)

    def log(self, message: str) -> None:
        print(f"[gpu_check] {message}", flush=True)


# (name, function, share of the budget)
SECTIONS: list[tuple[str, Callable[[Context], dict], float]] = [
    ("env", lambda ctx: environment(ctx), 0.03),
    ("nvdec", decode_checks.nvdec_probe, 0.01),
    ("precision", model_checks.precision, 0.08),
    ("throughput", speed_checks.throughput, 0.38),
    ("embed", speed_checks.embed, 0.08),
    ("profile", model_checks.profile, 0.06),
    ("max_batch", speed_checks.max_batch, 0.08),
    ("sdpa", model_checks.sdpa, 0.05),                       # late: a forced backend could break CUDA
    ("cpu_decode", decode_checks.cpu_decode, 0.17),
    ("nvdec_decode", decode_checks.nvdec_decode, 0.08),
]


def environment(ctx: Context) -> dict:
    """The machine, the versions that matter, and the measured bf16 matmul and device-copy ceilings."""
    import numpy as np

    import pipeline

    info = {"pipeline": os.path.dirname(pipeline.__file__), "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "numpy": np.__version__,
            "device": str(ctx.device), "smoke": ctx.smoke, "preset": ctx.preset}
    for name in ("timm", "transformers", "av", "PyNvVideoCodec", "torchcodec"):
        info[name] = decode_checks.package_version(name)
    info["wheels"] = carried_wheels(ctx.out)
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    gpu_memory_gib=props.total_memory / 2**30, driver=decode_checks.driver_version())
    info.update(model_checks.ceilings(ctx))
    return info


def carried_wheels(out: str) -> dict | str:
    """What benchmarks/gpu_wheels.py said of each carried wheel (gpu_run.sh writes OUT/wheels.json)."""
    try:
        with open(os.path.join(out, "wheels.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        return f"no record ({type(exc).__name__}); run through benchmarks/gpu_run.sh to install carried wheels"


def run_section(name: str, fn: Callable[[Context], dict], share: float, ctx: Context) -> dict:
    """Run one section inside its share of the time left; its result, or its error, never an exception.

    `share` is this section's part of the time left to it and the sections after it, so time a section
    does not use goes to the ones after it."""
    now = time.perf_counter()
    ctx.section_end = now + max(0.0, ctx.end - now) * share
    ctx.log(f"{name}: start ({ctx.left():.0f} s of budget)")
    start = time.perf_counter()
    try:
        record = {"status": "ok", "result": fn(ctx)}
    except Exception as exc:                                   # noqa: BLE001 - recorded, next section runs
        record = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        ctx.log(f"{name}: FAILED {record['error']}")
    finally:
        model_checks.release_memory(ctx)
    record["seconds"] = time.perf_counter() - start
    ctx.log(f"{name}: {record['status']} in {record['seconds']:.1f} s")
    return record


def write_outputs(out: str, report: dict) -> None:
    """gpu_check.json and gpu_check.md in `out`, each replaced whole (written aside, then renamed)."""
    report["targets"] = targets(report)
    for name, text in (("gpu_check.json", json.dumps(report, indent=1, default=str)),
                       ("gpu_check.md", markdown(report))):
        tmp = os.path.join(out, f".{name}.tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, os.path.join(out, name))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for gpu_check.json and gpu_check.md (created)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny preset, short video: exercises the code")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"seconds for the whole run ({DEFAULT_BUDGET_S:g}; smoke 120)")
    ap.add_argument("--only", default="", help="comma-separated section names (default: all)")
    ap.add_argument("--batches", default="", help="batch sizes of the throughput section (default 4,8,2,1)")
    ap.add_argument("--preset", default=None, help=f"model preset (default {TARGET_PRESET}; smoke: tiny)")
    args = ap.parse_args(argv)
    known = [name for name, _, _ in SECTIONS]
    args.only = [name for name in args.only.split(",") if name]
    if set(args.only) - set(known):
        ap.error(f"unknown sections {sorted(set(args.only) - set(known))}; known: {known}")
    args.budget_s = args.budget_s or (120.0 if args.smoke else DEFAULT_BUDGET_S)  # smoke: 2 rounds whatever the budget
    return args


def make_context(args: argparse.Namespace) -> Context:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    batches = tuple(int(b) for b in args.batches.split(",") if b) or ((2, 1) if args.smoke else (4, 8, 2, 1))
    ctx = Context(smoke=args.smoke, device=device, preset=args.preset or ("tiny" if args.smoke else TARGET_PRESET),
                  batches=batches, workdir=tempfile.mkdtemp(prefix="gpu_check_"), out=args.out,
                  end=time.perf_counter() + args.budget_s)
    if device.type != "cuda" and not args.smoke:
        ctx.log("WARNING: no CUDA device: every section runs on the CPU (hopelessly slow with TimeSformer-L; "
                "use --smoke or --preset tiny)")
    model_checks.configure(ctx)
    return ctx


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    ctx = make_context(args)
    report = {"meta": {"argv": sys.argv if argv is None else argv, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "smoke": args.smoke, "budget_s": args.budget_s, "preset": ctx.preset,
                       "batches": list(ctx.batches)}, "sections": {}}
    chosen = [(name, fn, share) for name, fn, share in SECTIONS if not args.only or name in args.only]
    done = watchdog(ctx, report, args.budget_s + GRACE_S)
    try:
        for i, (name, fn, share) in enumerate(chosen):
            report["meta"]["running"] = name
            report["sections"][name] = run_section(name, fn, share / sum(s for _, _, s in chosen[i:]), ctx)
            write_outputs(args.out, report)
        report["meta"].pop("running", None)
    finally:
        done.set()
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    ctx.log(f"done; {os.path.join(args.out, 'gpu_check.md')}")
    print(markdown(report), flush=True)
    return 0


def watchdog(ctx: Context, report: dict, seconds: float) -> threading.Event:
    """A daemon thread that, `seconds` from now, records the section still running as timed out, writes
    the outputs and ends the process (exit 3), so that what was measured comes back in any case. Setting
    the returned event (the run ended) calls it off."""
    done = threading.Event()

    def expire():
        if done.wait(seconds):
            return
        name = report["meta"].pop("running", None)
        if name and name not in report["sections"]:
            report["sections"][name] = {"status": "error", "error": f"timed out: still running {seconds:.0f} s "
                                        "after the start (budget plus grace); later sections did not run"}
        ctx.log(f"watchdog: {seconds:.0f} s passed, ending the run in {name}")
        try:
            write_outputs(ctx.out, json.loads(json.dumps(report, default=str)))
        finally:
            os._exit(3)
    threading.Thread(target=expire, name="gpu_check-watchdog", daemon=True).start()
    return done


if __name__ == "__main__":
    sys.exit(main())
