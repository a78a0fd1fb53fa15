"""GPU check, model sections: precision, SDPA backends, throughput against HF transformers, largest batch.

Every section takes the run's Context (see gpu_check.py) and returns a dict; tables go under "rows".
Models are built once a run and cached on the context: ours from the preset with seeded random weights
(truncated normal, std 0.02, for every linear layer and embedding, `temporal_fc` included; LayerNorm 1/0;
biases 0), HF transformers' Timesformer holding exactly the same weights, and variants of ours (matmul
weights in bf16, compiled blocks) as deep copies. Inputs are fresh normal noise, never zeros.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import re
import time
import warnings
from typing import Any, Callable

import torch

from model_throughput import clip_macs, hf_twin
from pipeline.model import get_preset, random_timesformer
from pipeline.model.accel import cast_matmul_weights_
from timing import synchronizer, timed_interleaved

GIB = 2**30


def configure(ctx) -> None:
    """Process-wide settings: room for one compiled graph per batch size and variant."""
    import torch._dynamo

    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    ctx.notes["compile_backend"] = "eager" if ctx.smoke else "inductor"


def release_memory(ctx, keep: tuple[str, ...] = ("ours", "hf")) -> None:
    """Drop cached models and forwards not in `keep` and give the freed GPU memory back."""
    for key in [k for k in ctx.cache if k not in keep]:
        del ctx.cache[key]
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def cached(ctx, key: str, build: Callable[[], Any]) -> Any:
    if key not in ctx.cache:
        ctx.cache[key] = build()
    return ctx.cache[key]


def ours(ctx) -> torch.nn.Module:
    return cached(ctx, "ours", lambda: random_timesformer(ctx.preset).to(ctx.device).eval())


def ours_bf16w(ctx) -> torch.nn.Module:
    """Ours with the Linear/Conv2d weights cast to bf16 once (same numbers under bf16 autocast)."""
    def build():
        model = copy.deepcopy(ours(ctx))
        cast_matmul_weights_(model, torch.bfloat16)
        return model
    return cached(ctx, "ours_bf16w", build)


def hf(ctx) -> torch.nn.Module:
    return cached(ctx, "hf", lambda: hf_twin(ours(ctx)).to(ctx.device).eval())


def clip(ctx, batch: int, seed: int = 0) -> torch.Tensor:
    """Normalised-looking input [batch, 3, T, S, S]: standard normal noise on the device."""
    p = get_preset(ctx.preset)
    g = torch.Generator(ctx.device).manual_seed(seed)
    return torch.randn(batch, 3, p.num_frames, p.img_size, p.img_size, device=ctx.device, generator=g)


def flop_per_clip(ctx) -> float:
    p = get_preset(ctx.preset)
    return 2 * clip_macs(ours(ctx).arch, p.num_frames, p.img_size)


def autocast(ctx, enabled: bool = True):
    return torch.autocast(ctx.device.type, dtype=ctx.dtype, enabled=enabled)


def ours_call(ctx, model, forward=None, amp: bool = True) -> Callable[[torch.Tensor], tuple]:
    """x → (CLS, logits) of our model under bf16 autocast (or none)."""
    forward = forward or model.forward_features

    def call(x):
        with torch.inference_mode(), autocast(ctx, amp):
            emb = forward(x)
            return emb, model.forward_head(emb)
    return call


def hf_call(ctx, model, amp: bool = True) -> Callable[[torch.Tensor], tuple]:
    """x (ours: [B, 3, T, H, W], permuted before timing) → (CLS, logits) of HF's model."""
    def call(pixel_values):
        with torch.inference_mode(), autocast(ctx, amp):
            cls = model.timesformer(pixel_values).last_hidden_state[:, 0]
            return cls, model.classifier(cls)
    return call


def hf_input(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 1, 3, 4).contiguous()


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a − ref‖ / ‖ref‖ in float64."""
    a, ref = a.double(), ref.double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def errors(out: tuple, ref: tuple) -> dict:
    return {"cls_rel_err": rel_err(out[0], ref[0]), "logits_rel_err": rel_err(out[1], ref[1]),
            "cls_max_abs": float((out[0].double() - ref[0].double()).abs().max())}


@contextlib.contextmanager
def exact_fp32():
    """float32 matmuls and convolutions without TF32, for a float32 reference."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def ceilings(ctx) -> dict:
    """The device's measured bf16 matmul rate and copy bandwidth (read + write), the two ceilings."""
    big = ctx.device.type == "cuda" and not ctx.smoke
    n = 8192 if big else 512
    a, b = (torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16) for _ in range(2))
    src = torch.randn((2**30 if big else 2**18) // 4, device=ctx.device)
    dst = torch.empty_like(src)
    secs, _ = timed_interleaved({"mm": lambda: a @ b, "copy": lambda: dst.copy_(src)}, 10, 3,
                                synchronizer(ctx.device))
    return {"bf16_matmul_tflops": 2 * n**3 / secs["mm"] / 1e12, "matmul_n": n,
            "copy_gb_per_s": 2 * src.numel() * 4 / secs["copy"] / 1e9}


def precision(ctx) -> dict:
    """bf16 variants vs the float32 reference at one clip of the preset's shape (CLS and logits). Only
    our fp32 reference is needed; any other row that fails (HF's reference included) records its error."""
    x = clip(ctx, 1, seed=1)
    with exact_fp32():
        ref = ours_call(ctx, ours(ctx), amp=False)(x)
    variants = {
        "HF fp32 vs ours fp32": lambda: _fp32(lambda: hf_call(ctx, hf(ctx), amp=False)(hf_input(x))),
        "ours bf16 autocast (fp32 weights)": lambda: ours_call(ctx, ours(ctx))(x),
        "ours bf16 weights + autocast (pipeline default)": lambda: ours_call(ctx, ours_bf16w(ctx))(x),
        "ours all-bf16 (no autocast)": lambda: all_bf16_call(ctx)(x),
        "HF bf16 autocast": lambda: hf_call(ctx, hf(ctx))(hf_input(x)),
    }
    rows = [{"variant": name, **guarded(lambda run=run: errors(run(), ref))} for name, run in variants.items()]
    same = guarded(lambda: {"same": bool(ours_call(ctx, ours_bf16w(ctx))(x)[0].equal(ours_call(ctx, ours(ctx))(x)[0]))})
    return {"shape": list(x.shape), "reference": "ours fp32, TF32 off", "rows": rows,
            "bf16_weights_bit_identical_to_autocast": same.get("same", same.get("error"))}


def _fp32(run: Callable[[], Any]) -> Any:
    with exact_fp32():
        return run()


def guarded(run: Callable[[], dict]) -> dict:
    """`run()`, or {"error": …} when it raises: one failing row never loses the others."""
    try:
        return run()
    except Exception as exc:                                   # noqa: BLE001 - recorded in the row
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def ours_all_bf16(ctx) -> torch.nn.Module:
    """Ours with every parameter in bf16, to run without autocast (residual stream and norms in bf16)."""
    return cached(ctx, "ours_all_bf16", lambda: copy.deepcopy(ours(ctx)).to(torch.bfloat16))


def all_bf16_call(ctx) -> Callable[[torch.Tensor], tuple]:
    call = ours_call(ctx, ours_all_bf16(ctx), amp=False)
    return lambda x: call(x.to(torch.bfloat16))


SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def sdpa(ctx) -> dict:
    """Which SDPA kernel serves each attention kind at one clip, and each backend's time when forced."""
    model, p = ours(ctx), get_preset(ctx.preset)
    n, t, d = (p.img_size // p.patch_size) ** 2, p.num_frames, p.embed_dim
    kinds = {"temporal": (model.blocks[0].temporal_attn, (n, t, d)), "spatial": (model.blocks[0].attn, (t, n + 1, d))}
    rows = []
    for kind, (module, shape) in kinds.items():
        x = torch.randn(shape, device=ctx.device)
        for amp in (True, False):
            call = _attention_call(ctx, module, x, amp)
            row = {"kind": kind, "dtype": "bf16 autocast" if amp else "fp32", "shape": "x".join(map(str, shape)),
                   "heads": module.num_heads, "head_dim": module.head_dim, "default_op": _sdpa_ops(call)}
            row.update({f"{b.lower()}_ms": _forced_ms(ctx, call, b) for b in SDPA_BACKENDS})
            rows.append(row)
    return {"rows": rows}


def _attention_call(ctx, module, x, amp: bool) -> Callable[[], torch.Tensor]:
    def call():
        with torch.inference_mode(), autocast(ctx, amp):
            return module(x)
    return call


def _sdpa_ops(call: Callable[[], Any]) -> str:
    """The attention operators the profiler saw under the default dispatch, most specific first."""
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    names = {e.key for e in prof.key_averages() if "attention" in e.key or "scaled_dot_product" in e.key}
    names.discard("aten::scaled_dot_product_attention")
    return ", ".join(sorted(names, key=len, reverse=True)) or "none seen"


def _forced_ms(ctx, call: Callable[[], Any], backend: str) -> float | str:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not hasattr(SDPBackend, backend):
        return "not in this torch"
    try:
        with sdpa_kernel([getattr(SDPBackend, backend)]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            secs, _ = timed_interleaved({"a": call}, ctx.iters(0.01, min(2.0, ctx.left() / 16)), 1,
                                        synchronizer(ctx.device))
        return secs["a"] * 1e3
    except RuntimeError as exc:
        return "unavailable: " + str(exc).splitlines()[0][:60]


ATTENTION_LABELS = {"temporal_attn": "vidfeat.temporal_attention", "attn": "vidfeat.spatial_attention"}
KERNEL_CLASSES = (   # first match wins: attention kernels also contain "mma"
    ("attention", r"flash|fmha|attention|_attn|sdpa|mha"),
    ("gemm", r"gemm|xmma|cutlass|cublas|nvjet|wgmma|hmma|aten::(mm|addmm|bmm|linear|matmul|_convolution|mkldnn)"),
    ("elementwise", r"elementwise|vectorized|unrolled|reduce|norm|softmax|gelu|copy|cat|add|mul|div|sub|"
                    r"index|fill|where|mean|sum|_to_copy|clone|contiguous"),
)


def profile(ctx) -> dict:
    """Where a forward's time goes at batch 4 (2 in a smoke run), the pipeline's default model (bf16
    weights, bf16 autocast, eager): device time by kernel class (GEMM, attention, element-wise, other),
    the top kernels, and the SDPA operators under the temporal and the spatial attention."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch = 2 if ctx.smoke else 4
    model, x = ours_bf16w(ctx), clip(ctx, batch, seed=4)
    call, sync = ours_call(ctx, model), synchronizer(ctx.device)
    start = time.perf_counter()
    call(x)
    sync()
    calls = ctx.iters(time.perf_counter() - start, min(10.0, ctx.left() / 3), 2, 10)
    cuda = ctx.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with labelled_attention(model), torch_profile(activities=activities) as prof:
        for _ in range(calls):
            call(x)
        sync()
    kernels = kernel_times(prof, cuda)
    return {"batch": batch, "calls": calls, "timeline": "CUDA kernels" if cuda else "CPU operators (self time)",
            **kernel_summary(kernels, calls), "sdpa_ops": sdpa_ops_by_label(prof)}


@contextlib.contextmanager
def labelled_attention(model):
    """Every temporal and spatial attention call of `model` inside a profiler range named for its kind."""
    from torch.autograd.profiler import record_function

    handles, open_ranges = [], []
    for block in model.blocks:
        for attr, label in ATTENTION_LABELS.items():
            module = getattr(block, attr, None)
            if module is None:
                continue
            handles.append(module.register_forward_pre_hook(
                lambda *_, label=label: open_ranges.append(record_function(label).__enter__())))
            handles.append(module.register_forward_hook(lambda *_: open_ranges.pop().__exit__(None, None, None)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def kernel_times(prof, cuda: bool) -> dict[str, float]:
    """name → device microseconds (CUDA kernels) or CPU self microseconds (aten operators)."""
    from torch.autograd import DeviceType

    times: dict[str, float] = {}
    for e in prof.key_averages():
        if cuda:
            if getattr(e, "device_type", None) != DeviceType.CUDA:
                continue
            us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        else:
            if not e.key.startswith("aten::") or e.key in ("aten::empty", "aten::empty_strided"):
                continue
            us = e.self_cpu_time_total
        if us > 0:
            times[e.key] = times.get(e.key, 0.0) + us
    return times


def kernel_class(name: str) -> str:
    for label, pattern in KERNEL_CLASSES:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return "other"


def kernel_summary(times: dict[str, float], calls: int) -> dict:
    """Milliseconds a forward and the share of each kernel class; the ten largest kernels."""
    total = sum(times.values()) or 1.0
    shares: dict[str, float] = {}
    for name, us in times.items():
        shares[kernel_class(name)] = shares.get(kernel_class(name), 0.0) + us / total
    top = sorted(times.items(), key=lambda kv: -kv[1])[:10]
    return {"ms_per_forward": total / calls / 1e3, "shares": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
            "top": [{"name": name[:120], "class": kernel_class(name), "ms_per_forward": us / calls / 1e3,
                     "share": us / total} for name, us in top]}


def sdpa_ops_by_label(prof) -> dict[str, list[str]]:
    """The attention operators seen inside each labelled range (temporal, spatial), most specific first."""
    seen: dict[str, set[str]] = {label: set() for label in ATTENTION_LABELS.values()}
    for e in prof.events():
        if "attention" not in e.name or not e.name.startswith("aten::") or \
                e.name == "aten::scaled_dot_product_attention":
            continue
        parent = e.cpu_parent
        while parent is not None and parent.name not in seen:
            parent = parent.cpu_parent
        if parent is not None:
            seen[parent.name].add(e.name)
    return {label.split(".")[1]: sorted(ops, key=len, reverse=True) or ["none seen"] for label, ops in seen.items()}
