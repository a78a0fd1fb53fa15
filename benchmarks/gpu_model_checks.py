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
import warnings
from typing import Any, Callable

import torch

from model_throughput import clip_macs, hf_twin
from pipeline.model import get_preset, random_timesformer
from pipeline.model.accel import cast_matmul_weights_, compiled_forward
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
    """bf16 variants vs the float32 reference at one clip of the preset's shape (CLS and logits)."""
    x = clip(ctx, 1, seed=1)
    with exact_fp32():
        ref = ours_call(ctx, ours(ctx), amp=False)(x)
        hf_ref = hf_call(ctx, hf(ctx), amp=False)(hf_input(x))
    rows = [{"variant": "HF fp32 vs ours fp32", **errors(hf_ref, ref)}]
    variants = {
        "ours bf16 autocast (pipeline default)": lambda: ours_call(ctx, ours(ctx))(x),
        "ours bf16 weights + autocast": lambda: ours_call(ctx, ours_bf16w(ctx))(x),
        "ours all-bf16 (no autocast)": lambda: all_bf16_call(ctx)(x),
        "HF bf16 autocast": lambda: hf_call(ctx, hf(ctx))(hf_input(x)),
    }
    for name, run in variants.items():
        rows.append({"variant": name, **errors(run(), ref)})
    same = ours_call(ctx, ours_bf16w(ctx))(x)[0].equal(ours_call(ctx, ours(ctx))(x)[0])
    return {"shape": list(x.shape), "reference": "ours fp32, TF32 off", "rows": rows,
            "bf16_weights_bit_identical_to_autocast": bool(same)}


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
