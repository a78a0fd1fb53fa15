"""Clips/s of our TimeSformer vs HF transformers on the same weights, input and device, in one run.

    python benchmarks/model_throughput.py --preset timesformer-k400 --batch 1 --iters 3        # CPU
    python benchmarks/model_throughput.py --preset timesformer-l-howto100m --batch 4 --iters 10 # H100

On CUDA both models run under bf16 autocast (ours with SDPA, optionally torch.compile); on the CPU in
fp32. Prints clips/s for each, the ratio, the max |Δ| of the CLS embeddings, and the achieved TFLOP/s
(analytic FLOPs of one clip, 2 FLOPs per multiply-add).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.model import get_preset, load_timesformer  # noqa: E402
from timing import synchronizer, timed_interleaved  # noqa: E402


def clip_macs(arch: dict, frames: int, size: int) -> float:
    """Multiply-adds of one divided space-time clip (attention, linears, patch embedding)."""
    d, p = arch["embed_dim"], arch["patch_size"]
    n = (size // p) ** 2
    tokens = n * frames
    per_block = (
        tokens * 4 * d * d + tokens * 2 * frames * d          # temporal: qkv+proj, QKᵀ and AV over t frames
        + tokens * d * d                                       # temporal_fc
        + frames * (n + 1) * 4 * d * d + frames * 2 * (n + 1) ** 2 * d   # spatial, with a CLS copy per frame
        + (tokens + 1) * 2 * d * int(d * arch["mlp_ratio"])    # MLP
    )
    patch_embed = tokens * 3 * p * p * d
    return arch["depth"] * per_block + patch_embed


def hf_twin(model) -> torch.nn.Module:
    """HF TimesformerForVideoClassification holding exactly our weights."""
    import transformers

    a = model.arch
    cfg = transformers.TimesformerConfig(
        image_size=a["img_size"], patch_size=a["patch_size"], num_frames=a["num_frames"], hidden_size=a["embed_dim"],
        num_hidden_layers=a["depth"], num_attention_heads=a["num_heads"],
        intermediate_size=int(a["embed_dim"] * a["mlp_ratio"]), num_labels=a["num_classes"])
    hf = transformers.TimesformerForVideoClassification(cfg).eval()
    inverse = _our_to_hf_names(hf.state_dict().keys())
    hf.load_state_dict({inverse[k]: v for k, v in model.state_dict().items()})
    return hf


def _our_to_hf_names(hf_keys) -> dict[str, str]:
    from pipeline.model import to_timesformer_keys

    return {ours: hf for hf, ours in zip(hf_keys, to_timesformer_keys({k: k for k in hf_keys}))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="timesformer-k400")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="torch.compile our model (CUDA)")
    ap.add_argument("--no-hf", action="store_true", help="measure ours only")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = get_preset(args.preset)
    ours = load_timesformer("random", preset=preset.name)
    hf = None if args.no_hf else hf_twin(ours)
    ours = ours.to(device)
    x = torch.randn(args.batch, 3, preset.num_frames, preset.img_size, preset.img_size, device=device)
    dtype = torch.bfloat16 if device == "cuda" else None

    def run(model_fn):
        def call(inp):
            with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                return model_fn(inp)
        return call

    fns = {"ours": run(torch.compile(ours.forward_features) if args.compile else ours.forward_features)}
    if hf is not None:
        hf = hf.to(device)
        fns["hf"] = run(lambda inp: hf.timesformer(inp.permute(0, 2, 1, 3, 4)).last_hidden_state[:, 0])
    calls = {name: (lambda fn=fn: fn(x)) for name, fn in fns.items()}
    secs, outs = timed_interleaved(calls, args.iters, args.warmup, synchronizer(device))
    macs = clip_macs(ours.arch, preset.num_frames, preset.img_size)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "threads": torch.get_num_threads(), "preset": preset.name, "batch": args.batch,
              "dtype": "bf16" if dtype else "fp32", "iters": args.iters,
              "ours_clips_per_s": args.batch / secs["ours"], "tmac_per_clip": macs / 1e12,
              "ours_tflops": 2 * macs * args.batch / secs["ours"] / 1e12}
    if hf is not None:
        result["hf_clips_per_s"] = args.batch / secs["hf"]
        result["ratio_ours_over_hf"] = secs["hf"] / secs["ours"]
        result["max_abs_diff_cls"] = float((outs["ours"].float() - outs["hf"].float()).abs().max())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
