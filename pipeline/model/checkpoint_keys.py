"""Checkpoint formats to one set of names: official `.pyth` (with or without `model_state` / `model.`),
HF transformers' Timesformer, plain state dicts. `to_timesformer_keys` unwraps and renames every one of
them to our (= the official) parameter names; `infer_arch` reads the architecture from the tensors.
Pure functions of a state dict: no file, no model.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from pipeline.errors import CheckpointError
from pipeline.model.checkpoint_diagnosis import preview


_HF_RENAMES = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.time_embeddings$", "time_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.temporal_attention\.attention\.qkv\.", r"blocks.\1.temporal_attn.qkv."),
    (r"^encoder\.layer\.(\d+)\.temporal_attention\.output\.dense\.", r"blocks.\1.temporal_attn.proj."),
    (r"^encoder\.layer\.(\d+)\.temporal_dense\.", r"blocks.\1.temporal_fc."),
    (r"^encoder\.layer\.(\d+)\.temporal_layernorm\.", r"blocks.\1.temporal_norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
)
_REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight")


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: `model_state` (official), `state_dict`, `model`, or itself."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict of tensors, found a {type(obj).__name__}")
    for key in ("model_state", "state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"no tensors found (top-level keys: {preview(obj)})")
    return tensors


def to_timesformer_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pure key mapping: strip `module.` / `model.` / `timesformer.` prefixes, rename HF names.

    The result uses the official names without prefix (`blocks.0.temporal_fc.weight`, `head.bias`, ...).
    """
    out = {}
    for key, value in state_dict.items():
        name = re.sub(r"^(module\.)?(model\.)?", "", key)
        hf = name.startswith(("timesformer.", "embeddings.", "encoder.", "classifier."))
        name = re.sub(r"^timesformer\.", "", name)
        if hf:
            for pattern, repl in _HF_RENAMES:
                name, n = re.subn(pattern, repl, name)
                if n:
                    break
        out[name] = value
    return out


def infer_arch(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture read from the tensors: dim, depth, patch, image size, frames, classes, attention."""
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        raise CheckpointError(
            f"not a TimeSformer checkpoint: missing {missing}; it has {len(sd)} tensors such as {preview(sd)}"
        )
    proj = sd["patch_embed.proj.weight"]                         # [D, C, p, p]
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    grid = sd["pos_embed"].shape[1] - 1
    side = int(round(grid ** 0.5))
    if side * side != grid:
        raise CheckpointError(f"pos_embed has {grid} patch entries, not a square grid")
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    depth = 1 + max(blocks, default=-1)

    def any_block(suffix: str) -> torch.Tensor | None:
        """The first block's tensor that has this name: a missing block 0 must not change what the
        other blocks describe (attention type, qkv bias, MLP width)."""
        return next((sd[f"blocks.{i}.{suffix}"] for i in blocks if f"blocks.{i}.{suffix}" in sd), None)

    if any_block("temporal_fc.weight") is not None:
        attention_type = "divided_space_time"
    elif "time_embed" in sd:
        attention_type = "joint_space_time"
    else:
        attention_type = "space_only"
    fc1 = any_block("mlp.fc1.weight")
    return dict(
        embed_dim=embed_dim, in_chans=in_chans, patch_size=patch, img_size=side * patch, depth=depth,
        num_frames=sd["time_embed"].shape[1] if "time_embed" in sd else 8,
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        mlp_ratio=(fc1.shape[0] / embed_dim) if fc1 is not None else 4.0,
        qkv_bias=any_block("attn.qkv.bias") is not None, attention_type=attention_type,
    )
