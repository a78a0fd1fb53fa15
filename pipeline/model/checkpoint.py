"""Load TimeSformer weights: official `.pyth`, HF transformers state dicts, plain state dicts, or "random".

One pure function (`to_timesformer_keys`) unwraps and renames every supported format to our (= the
official) parameter names; the architecture is then read from the tensors (`infer_arch`) and the
weights are loaded strictly, with every missing, unexpected or mis-shaped key reported by name.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Any, Mapping

import torch

from pipeline.errors import CheckpointError
from pipeline.model.presets import get_preset
from pipeline.model.timesformer import TimeSformer, resize_pos_embed, resize_time_embed

log = logging.getLogger(__name__)

RANDOM = "random"

# HF transformers Timesformer name → official name (applied after stripping "timesformer.")
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
        raise CheckpointError(f"no tensors found (top-level keys: {_preview(obj)})")
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
            f"not a TimeSformer checkpoint: missing {missing}; it has {len(sd)} tensors such as {_preview(sd)}"
        )
    proj = sd["patch_embed.proj.weight"]                         # [D, C, p, p]
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    grid = sd["pos_embed"].shape[1] - 1
    side = int(round(grid ** 0.5))
    if side * side != grid:
        raise CheckpointError(f"pos_embed has {grid} patch entries, not a square grid")
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if "blocks.0.temporal_fc.weight" in sd:
        attention_type = "divided_space_time"
    elif "time_embed" in sd:
        attention_type = "joint_space_time"
    else:
        attention_type = "space_only"
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    return dict(
        embed_dim=embed_dim, in_chans=in_chans, patch_size=patch, img_size=side * patch, depth=depth,
        num_frames=sd["time_embed"].shape[1] if "time_embed" in sd else 8,
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        mlp_ratio=(fc1.shape[0] / embed_dim) if fc1 is not None else 4.0,
        qkv_bias="blocks.0.attn.qkv.bias" in sd, attention_type=attention_type,
    )


def read_checkpoint(source: str, cache_dir: str | None = None) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) of a path or fsspec URL (remote files cached locally)."""
    local = _local_copy(source, cache_dir)
    try:
        obj = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as exc:                                     # noqa: BLE001 - reported with the file name
        raise CheckpointError(_load_failure(source, exc)) from None
    try:
        return unwrap_state_dict(obj)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None


def load_timesformer(source: str, *, preset: str | None = None, num_heads: int | None = None,
                     num_frames: int | None = None, img_size: int | None = None, seed: int = 0,
                     fused_attn: bool = True, cache_dir: str | None = None) -> TimeSformer:
    """A TimeSformer in eval mode on the CPU, from a checkpoint path/URL or "random" (see DESIGN.md §4).

    The architecture comes from the weights; `num_heads` defaults to embed_dim/64. `num_frames` /
    `img_size` override the checkpoint's and resize `time_embed` (1-D nearest) and `pos_embed`
    (2-D grid nearest) as the official forward does. "random" builds `preset` (default: the default
    preset) with weights seeded by `seed`: same preset and seed, same weights.
    """
    if source == RANDOM:
        return random_timesformer(preset, seed=seed, num_heads=num_heads, num_frames=num_frames,
                                  img_size=img_size, fused_attn=fused_attn)
    sd = to_timesformer_keys(read_checkpoint(source, cache_dir))
    arch = infer_arch(sd)
    arch["num_frames"] = num_frames or arch["num_frames"]
    arch["img_size"] = img_size or arch["img_size"]
    sd = _resize_embeddings(sd, arch)
    model = TimeSformer(**arch, num_heads=num_heads, fused_attn=fused_attn)
    load_strict(model, sd, source)
    return model.eval()


def random_timesformer(preset: str | None = None, *, seed: int = 0, num_heads: int | None = None,
                       num_frames: int | None = None, img_size: int | None = None,
                       fused_attn: bool = True) -> TimeSformer:
    """A preset's network with seeded random weights (all of them, `temporal_fc` included)."""
    p = get_preset(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TimeSformer(img_size=img_size or p.img_size, patch_size=p.patch_size, num_classes=p.num_classes,
                            embed_dim=p.embed_dim, depth=p.depth, num_heads=num_heads or p.num_heads,
                            num_frames=num_frames or p.num_frames, attention_type=p.attention_type,
                            fused_attn=fused_attn)
        model.init_weights(zero_temporal_fc=False)
    return model.eval()


def load_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """load_state_dict that fails on any missing, unexpected or mis-shaped key, naming each one."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(v.shape)}"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes))
    if problems:
        raise CheckpointError(f"{source} does not fit the TimeSformer it describes: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)


def checkpoint_sha256(source: str, cache_dir: str | None = None, seed: int = 0, preset: str | None = None) -> str:
    """Content hash of a checkpoint file (provenance); "random:<preset>:<seed>" for random weights."""
    if source == RANDOM:
        return f"random:{get_preset(preset).name}:{seed}"
    digest = hashlib.sha256()
    with open(_local_copy(source, cache_dir), "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resize_embeddings(sd: dict[str, torch.Tensor], arch: dict[str, Any]) -> dict[str, torch.Tensor]:
    grid = arch["img_size"] // arch["patch_size"]
    sd = dict(sd)
    sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], grid, grid)
    if "time_embed" in sd:
        sd["time_embed"] = resize_time_embed(sd["time_embed"], arch["num_frames"])
    return sd


def _local_copy(source: str, cache_dir: str | None) -> str:
    """A local path for `source`: itself when local, else a copy in the checkpoint cache (fsspec filecache)."""
    import fsspec
    from fsspec.utils import infer_storage_options

    if infer_storage_options(source)["protocol"] in ("file", "local"):
        path = source[len("file://"):] if source.startswith("file://") else source
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint not found: {source}")
        if os.path.isdir(path):
            raise CheckpointError(f"checkpoint is a directory, not a file: {source}")
        return path
    cache = cache_dir or os.environ.get("VIDFEAT_CACHE", os.path.expanduser("~/.cache/vidfeat/checkpoints"))
    try:
        return fsspec.open_local(f"filecache::{source}", filecache={"cache_storage": cache})
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {source}") from None
    except Exception as exc:                                     # noqa: BLE001
        raise CheckpointError(f"cannot fetch checkpoint {source}: {type(exc).__name__}: {exc}") from None


def _load_failure(source: str, exc: Exception) -> str:
    text = str(exc)
    detail = text.split("WeightsUnpickler error:")[-1].strip().split("\n")[0] if text else type(exc).__name__
    if "Unsupported global" in text:
        return (f"{source} is refused: it is a pickle that would run or build Python objects ({detail}); "
                f"vidfeat loads checkpoints with weights_only=True and only accepts tensors and plain containers")
    return f"{source} is not a readable torch checkpoint ({type(exc).__name__}: {detail})"


def _preview(mapping: Mapping, n: int = 6) -> str:
    keys = list(mapping)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(map(str, keys[:n])) + more
