"""GPU check, speed sections: throughput against HF transformers, the embed path, the largest batch.

Throughput variants (all under bf16 autocast, same weights, same input; calls interleaved):
  hf                         HF transformers' Timesformer (eager attention)
  ours                       the pipeline's default path: fp32 weights, SDPA
  ours+bf16w                 matmul weights cast to bf16 once (bit-identical outputs)
  ours+bf16w+compile         and every block compiled (inductor; the first batch size gets a static graph,
                             the others share one with a dynamic batch, as in the pipeline)
  ours+bf16w+compile+graphs  and CUDA graphs (compile mode "reduce-overhead"; CUDA only)
  ours-all-bf16              every parameter and the residual stream in bf16, no autocast (other numbers:
                             its error against fp32 is in the precision section)
Compiled variants are skipped, and say so, when the time left is shorter than a compile took.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch

from gpu_model_checks import (GIB, all_bf16_call, cached, clip, flop_per_clip, hf, hf_call, hf_input, ours,
                              ours_bf16w, ours_call, rel_err, release_memory)
from pipeline.model import get_preset
from pipeline.model.accel import compiled_forward
from pipeline.model.limits import MAX_SEQUENCES, max_clips_per_forward
from timing import synchronizer, timed_interleaved

COMPILE_GUESS_S = {"inductor": 60.0, "eager": 2.0}      # before the first compile has been timed


def variant_builders(ctx) -> dict[str, Callable[[], Callable]]:
    """name → a builder of the variant's call (x → (CLS, logits)); HF's call takes HF's input layout."""
    builders = {
        "hf": lambda: hf_call(ctx, hf(ctx)),
        "ours": lambda: ours_call(ctx, ours(ctx)),
        "ours+bf16w": lambda: ours_call(ctx, ours_bf16w(ctx)),
        "ours+bf16w+compile": lambda: compiled_call(ctx, "default"),
        "ours-all-bf16": lambda: all_bf16_call(ctx),
    }
    if ctx.device.type == "cuda":
        builders["ours+bf16w+compile+graphs"] = lambda: compiled_call(ctx, "reduce-overhead")
    return builders


def compiled_call(ctx, mode: str) -> Callable:
    """Ours with bf16 weights and compiled blocks (torch.compile's default dynamic-shape policy)."""
    def build():
        model = copy.deepcopy(ours_bf16w(ctx))
        forward = compiled_forward(model, "blocks", mode, backend=ctx.notes["compile_backend"])
        return ours_call(ctx, model, forward)
    return cached(ctx, f"compiled_{mode}", build)


def first_calls(ctx, fn: Callable, x: torch.Tensor) -> dict:
    """Time the first call (compiles, autotunes) and read the peak memory of the second."""
    sync = synchronizer(ctx.device)
    start = time.perf_counter()
    fn(x)
    sync()
    first = time.perf_counter() - start
    row = {"first_call_s": first}
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    fn(x)
    sync()
    row["second_call_s"] = time.perf_counter() - start
    if ctx.device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        row["activations_gib"] = (torch.cuda.max_memory_allocated() - before) / GIB
    return row


def throughput(ctx) -> dict:
    """Clips/s, TFLOP/s and memory of each variant at each batch size (most important batch first)."""
    flop, rows = flop_per_clip(ctx), []
    for i, batch in enumerate(ctx.batches):
        try:
            rows += batch_rows(ctx, batch, flop, seconds=ctx.left() / (len(ctx.batches) - i))
        except Exception as exc:                               # noqa: BLE001 - e.g. OOM: next batch size
            rows.append({"batch": batch, "variant": "all", "error": f"{type(exc).__name__}: {exc}"[:300]})
        release_memory(ctx, keep=("ours", "hf", "ours_bf16w", "ours_all_bf16", "compiled_default",
                                  "compiled_reduce-overhead"))
    eager = [1 / r["clips_per_s"] for r in rows if r["variant"] == "ours" and "clips_per_s" in r]
    if eager:
        ctx.notes["clip_s"] = min(eager)                       # seconds a clip, for the max_batch section
    return {"flop_per_clip": flop, "dtype": "bf16 autocast", "rows": sorted(rows, key=lambda r: r["batch"]),
            "best_vs_hf": best_ratios(rows)}


def batch_rows(ctx, batch: int, flop: float, seconds: float) -> list[dict]:
    """Every variant at one batch size: first calls, then interleaved timed rounds that fit `seconds`."""
    x = clip(ctx, batch, seed=10 + batch)
    calls, rows = warm_variants(ctx, batch, x)
    round_s = sum(r.get("second_call_s", 0.0) for r in rows.values())
    secs, outs = timed_interleaved(calls, ctx.iters(round_s, 0.7 * max(0.0, seconds - 5)), 0,
                                   synchronizer(ctx.device))
    for name, s in secs.items():
        rows[name].update(ms_per_call=s * 1e3, clips_per_s=batch / s, tflops=flop * batch / s / 1e12)
        if "ours" in outs:
            rows[name]["cls_rel_err_vs_ours"] = rel_err(outs[name][0].float(), outs["ours"][0].float())
    for row in rows.values():
        if "clips_per_s" in row and "clips_per_s" in rows["hf"]:
            row["x_hf"] = row["clips_per_s"] / rows["hf"]["clips_per_s"]
    return list(rows.values())


def warm_variants(ctx, batch: int, x: torch.Tensor) -> tuple[dict, dict]:
    """Build each variant and make its first calls: (name → call of no arguments, name → row). A variant
    that fails has an "error" in its row and no call; a compiled one is skipped when less time is left
    than a compile took."""
    inputs, calls, rows = {"hf": hf_input(x)}, {}, {}
    guess = COMPILE_GUESS_S[ctx.notes["compile_backend"]]
    for name, build in variant_builders(ctx).items():
        rows[name] = {"batch": batch, "variant": name}
        if "compile" in name and ctx.left() < ctx.notes.get("compile_s", guess):
            rows[name]["skipped"] = f"budget: {ctx.left():.0f} s left"
            continue
        try:
            fn, inp = build(), inputs.get(name, x)
            rows[name].update(first_calls(ctx, fn, inp))
            calls[name] = lambda fn=fn, inp=inp: fn(inp)
        except Exception as exc:                               # noqa: BLE001 - this variant only
            rows[name]["error"] = f"{type(exc).__name__}: {exc}"[:300]
        if "compile" in name and "first_call_s" in rows[name]:
            ctx.notes["compile_s"] = max(ctx.notes.get("compile_s", 0.0), rows[name]["first_call_s"])
    return calls, rows


def best_ratios(rows: list[dict]) -> list[dict]:
    """Per batch size: the fastest variant of ours, its clips/s over HF's and its TFLOP/s."""
    best = []
    for batch in sorted({r["batch"] for r in rows}):
        mine = [r for r in rows if r["batch"] == batch and r["variant"].startswith("ours") and "x_hf" in r]
        if mine:
            top = max(mine, key=lambda r: r["clips_per_s"])
            best.append({k: top.get(k) for k in ("batch", "variant", "clips_per_s", "tflops", "x_hf",
                                                 "cls_rel_err_vs_ours")})
    return best


def max_batch(ctx) -> dict:
    """The largest batch of ours (fp32 weights, bf16 autocast, eager) whose forward fits: doubling, then
    bisecting between the last batch that fit and the first that did not, while time allows."""
    release_memory(ctx, keep=("ours",))
    p = get_preset(ctx.preset)
    limit = max_clips_per_forward(p.img_size, p.patch_size)          # the fused attention kernels' limit
    call, cap = ours_call(ctx, ours(ctx)), 4 if ctx.smoke else min(1024, limit)
    rows, lo, hi, batch = [], 0, None, max(ctx.batches)
    while batch <= cap and (row := try_batch(ctx, call, batch)) is not None:
        rows.append(row)
        lo, hi = (batch, hi) if row["fits"] else (lo, batch)
        if not row["fits"]:
            break
        batch *= 2
    while hi is not None and hi - lo > max(1, lo // 8) and (row := try_batch(ctx, call, (lo + hi) // 2)):
        rows.append(row)
        lo, hi = (row["batch"], hi) if row["fits"] else (lo, row["batch"])
    return {"largest_fitting_batch": lo, "first_failing_batch": hi, "cap": cap, "rows": rows,
            "cap_reason": f"{limit} clips: the fused attention kernels take at most {MAX_SEQUENCES:,} sequences "
                          "a call (pipeline/model/limits.py)"}


def try_batch(ctx, call: Callable, batch: int) -> dict | None:
    """One forward at `batch`: fits or not (out of memory, or any other CUDA refusal); None when the
    time left is too short for it."""
    if 1.5 * ctx.notes.get("clip_s", 0.05) * batch + 2 > ctx.left():
        return None
    release_memory(ctx, keep=("ours",))
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        x = clip(ctx, batch, seed=batch)
        start = time.perf_counter()
        call(x)
        synchronizer(ctx.device)()
        seconds = time.perf_counter() - start
    except RuntimeError as exc:                                # out of memory is one
        return {"batch": batch, "fits": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    row = {"batch": batch, "fits": True, "seconds": seconds, "clips_per_s": batch / seconds}
    if ctx.device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
    return row


def embed(ctx) -> dict:
    """`ClipEmbedder` (the inference actor) on uint8 host frames vs its bare model on a ready input."""
    from pipeline.config import Config
    from pipeline.run.infer import ClipEmbedder

    release_memory(ctx, keep=())
    embedder = ClipEmbedder(Config.from_preset(ctx.preset, checkpoint="random").to_dict())
    rows = []
    for batch in ((2,) if ctx.smoke else (4, 8)):
        rows += embed_rows(ctx, embedder, batch, seconds=ctx.left() / 2)
    return {"device": embedder.device_label, "dtype": str(embedder.dtype), "rows": rows,
            "transfer": transfer_rates(ctx, rows and max(r["batch"] for r in rows))}


BARE = "bare model (input ready on device)"


def embed_rows(ctx, embedder, batch: int, seconds: float) -> list[dict]:
    """Each upload path and `__call__` against the bare model at one batch size (interleaved rounds)."""
    calls = embed_calls(embedder, host_frames(ctx, batch))
    first = time.perf_counter()
    timed_interleaved(calls, 1, 0)
    n = ctx.iters(time.perf_counter() - first, 0.8 * seconds, 2, 10)
    secs, outs = timed_interleaved(calls, n, 0, synchronizer(ctx.device))
    bare_s, plain = secs.pop(BARE), outs["embed, chunk whole"][0]
    rows = [{"batch": batch, "path": BARE, "ms_per_call": bare_s * 1e3, "clips_per_s": batch / bare_s}]
    for name, s in secs.items():
        emb = outs[name] if name.startswith("__call__") else outs[name][0]
        rows.append({"batch": batch, "path": name, "ms_per_call": s * 1e3, "clips_per_s": batch / s,
                     "overhead_pct": (s / bare_s - 1) * 100, "max_abs_diff_vs_plain": float(np.abs(emb - plain).max())})
    return rows


def embed_calls(embedder, frames: np.ndarray) -> dict[str, Callable]:
    """The bare model on a ready input; `embed` through each uploader; `__call__` on a Ray-shaped batch."""
    from pipeline.run.results import matrix
    from pipeline.decode.transforms import to_model_input
    from pipeline.run.upload import ChunkUploader, as_tensor

    batch = len(frames)
    x = to_model_input(as_tensor(frames).to(embedder.device).flatten(0, 1), embedder.preprocess)
    uploaders = {f"embed, chunk {c or 'whole'}{' pinned' if u.pinned else ''}": u
                 for c in (0, 1, 2, batch) for u in [ChunkUploader(embedder.device, c)]}
    ray_batch = {"video_id": np.array([f"v{i}" for i in range(batch)], dtype=object),
                 "error": np.array([""] * batch, dtype=object), "stage": np.array([""] * batch, dtype=object),
                 "frames": frames}

    def bare():
        with torch.no_grad(), torch.autocast(embedder.device.type, dtype=embedder.dtype,
                                             enabled=embedder.dtype != torch.float32):
            emb = embedder.forward(x)
            return emb.float(), embedder.model.forward_head(emb)

    def via(uploader, fn):
        embedder.uploader = uploader
        return fn()

    plain = uploaders["embed, chunk whole"]
    return {BARE: bare, **{name: (lambda u=u: via(u, lambda: embedder.embed(frames))) for name, u in uploaders.items()},
            "__call__ (a Ray batch, plain upload)": lambda: via(plain, lambda: matrix(embedder(ray_batch)["embedding"]))}


def host_frames(ctx, batch: int) -> np.ndarray:
    """Random uint8 clips as Ray hands the decode stage's output to the actor: [batch, crops=1, T, S, S, 3],
    one read-only array over a shared buffer (bytes here, the object store there), not a writable copy."""
    p = get_preset(ctx.preset)
    shape = (batch, 1, p.num_frames, p.img_size, p.img_size, 3)
    data = np.random.default_rng(batch).integers(0, 256, shape, dtype=np.uint8).tobytes()
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def transfer_rates(ctx, batch: int) -> dict:
    """GB/s of host-to-device copies of one batch of frames: pageable, pinned, and host into pinned."""
    if ctx.device.type != "cuda" or not batch:
        return {"skipped": "needs CUDA"}
    frames = torch.from_numpy(host_frames(ctx, batch).copy())
    pinned = torch.empty_like(frames).pin_memory()
    calls = {"pageable_to_device": lambda: frames.to(ctx.device),
             "pinned_to_device": lambda: pinned.to(ctx.device, non_blocking=True),
             "host_to_pinned": lambda: pinned.copy_(frames)}
    secs, _ = timed_interleaved(calls, 5, 1, synchronizer(ctx.device))
    return {"batch": batch, "mb": frames.numel() / 1e6, **{f"{k}_gb_per_s": frames.numel() / s / 1e9
                                                          for k, s in secs.items()}}

