"""Load TimeSformer weights: official `.pyth`, HF transformers state dicts, plain state dicts, or "random".

One pure function (`to_timesformer_keys`) unwraps and renames every supported format to our (= the
official) parameter names; the architecture is then read from the tensors (`infer_arch`) and the
weights are loaded strictly, with every missing, unexpected or mis-shaped key reported by name.
`check_checkpoint` runs the same reading and the same strict comparison in the driver, on a model built
on the `meta` device (no weights allocated; the file is memory-mapped), before anything is written.
Files torch refuses to load safely are named with the reason, never with torch's advice to load them
unsafely.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from typing import Any, Mapping

import torch

from pipeline.errors import CheckpointError
from pipeline.model.checkpoint_diagnosis import diagnose, is_zip, some
from pipeline.model.checkpoint_keys import infer_arch, to_timesformer_keys, unwrap_state_dict
from pipeline.presets import get_preset
from pipeline.model.timesformer import TimeSformer, resize_pos_embed, resize_time_embed

log = logging.getLogger(__name__)

RANDOM = "random"

# HF transformers Timesformer name → official name (applied after stripping "timesformer.")
def read_checkpoint(source: str, cache_dir: str | None = None, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) of a path or fsspec URL (remote files cached locally).

    `mmap=True` maps a zip-format file (torch ≥ 1.6) instead of reading it: tensors keep their shapes
    and dtypes but their bytes stay on disk until touched (legacy files are read as usual).
    """
    local = _local_copy(source, cache_dir)
    try:
        with warnings.catch_warnings():              # "Detected pickle protocol 4 ... please file an issue"
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(local, map_location="cpu", weights_only=True, mmap=mmap and is_zip(local))
    except MemoryError:
        raise
    except Exception as exc:                                     # noqa: BLE001 - reported with the file name
        raise CheckpointError(diagnose(source, exc, local)) from None
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
    sd, _, arch = _prepare(source, num_frames=num_frames, img_size=img_size, cache_dir=cache_dir)
    model = _build(source, arch, num_heads=num_heads, fused_attn=fused_attn)
    load_strict(model, sd, source)
    return model.eval()


def check_checkpoint(source: str, *, preset: str | None = None, num_heads: int | None = None,
                     num_frames: int | None = None, img_size: int | None = None, seed: int = 0,
                     fused_attn: bool = True, cache_dir: str | None = None) -> None:
    """Everything `load_timesformer` (same arguments) checks about a checkpoint, without its weights.

    Reads the file as the inference actor will (weights_only=True; zip files memory-mapped, so the
    tensor bytes are not read), maps its names, reads the architecture, resizes the embeddings to
    `num_frames` / `img_size`, builds that TimeSformer on the `meta` device and compares names and
    shapes strictly. Raises CheckpointError naming the file and every missing, unexpected and mis-shaped
    key (see `load_strict`). "random" weights always pass. A checkpoint whose network differs from
    `preset`'s (depth, width, attention, classes, native frames or size) passes with a warning: the
    architecture comes from the weights (DESIGN.md §4), but a checkpoint with its last blocks missing
    only shows here. Not seen here, as the tensor bytes are not read: damage inside an intact zip
    archive (a stored record shorter than its tensor); the actor's load still names it.
    """
    if source == RANDOM:
        return
    sd, native, arch = _prepare(source, num_frames=num_frames, img_size=img_size, cache_dir=cache_dir, mmap=True)
    with torch.device("meta"):
        model = _build(source, arch, num_heads=num_heads, fused_attn=fused_attn)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = fit_problems(expected, sd)
    if problems:
        raise CheckpointError(_misfit_message(source, model.arch, problems))
    differences = _preset_differences(native, preset)
    if differences:
        log.warning("checkpoint %s is not the network of preset %s (%s): features come from the checkpoint's "
                    "network", source, get_preset(preset).name, "; ".join(differences))


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
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = fit_problems(expected, sd)
    if problems:
        raise CheckpointError(_misfit_message(source, getattr(model, "arch", None), problems))
    model.load_state_dict(sd, strict=True)




def fit_problems(expected: Mapping[str, tuple[int, ...]], sd: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps `sd` from loading strictly into a model whose state dict has `expected` shapes:
    missing keys, unexpected keys, shape mismatches (checkpoint vs model), each named (at most SHOWN of
    each, then a count). Empty when it fits. Pure: shapes only, so `expected` may come from a meta model."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(v)}"
              for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v)]
    problems = []
    if missing:
        problems.append(f"missing keys {some(missing, quote=True)}")
    if unexpected:
        problems.append(f"unexpected keys {some(unexpected, quote=True)}")
    if shapes:
        problems.append(f"shape mismatches {some(shapes)}")
    return problems


def _prepare(source: str, *, num_frames: int | None, img_size: int | None, cache_dir: str | None,
             mmap: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict under our names with embeddings resized, the checkpoint's own architecture, the
    architecture to build) — the one path `load_timesformer` and `check_checkpoint` share."""
    sd = to_timesformer_keys(read_checkpoint(source, cache_dir, mmap=mmap))
    try:
        native = infer_arch(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (IndexError, ValueError, TypeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{source}: not a TimeSformer checkpoint: its tensors have unexpected shapes "
                              f"({type(exc).__name__}: {exc})") from None
    arch = dict(native, num_frames=num_frames or native["num_frames"], img_size=img_size or native["img_size"])
    try:
        sd = _resize_embeddings(sd, arch)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: its position embeddings cannot be resized to {arch['num_frames']} frames "
                              f"of {arch['img_size']} px: {exc}") from None
    return sd, native, arch


def _build(source: str, arch: dict[str, Any], *, num_heads: int | None, fused_attn: bool) -> TimeSformer:
    try:
        return TimeSformer(**arch, num_heads=num_heads, fused_attn=fused_attn)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: cannot build the TimeSformer it describes ({_describe(arch)}): "
                              f"{exc}") from None


def _misfit_message(source: str, arch: Mapping[str, Any] | None, problems: list[str]) -> str:
    described = f" ({_describe(arch)})" if arch else ""
    return f"{source} does not fit the TimeSformer it describes{described}: " + "; ".join(problems)


def _describe(arch: Mapping[str, Any]) -> str:
    heads = f", {arch['num_heads']} heads" if arch.get("num_heads") else ""
    return (f"dim {arch['embed_dim']}, depth {arch['depth']}{heads}, patch {arch['patch_size']}, "
            f"{arch['num_frames']} frames of {arch['img_size']} px, {arch['num_classes']} classes, "
            f"{arch['attention_type']}")


def _preset_differences(native: Mapping[str, Any], preset: str | None) -> list[str]:
    """How the checkpoint's own network differs from `preset`'s ("depth 10 vs 12", ...)."""
    try:
        p = get_preset(preset)
    except ValueError:
        return []
    fields = ["embed_dim", "depth", "patch_size", "attention_type", "num_classes", "img_size"]
    if native["attention_type"] != "space_only":
        fields.append("num_frames")
    return [f"{f} {native[f]} vs {getattr(p, f)}" for f in fields if native[f] != getattr(p, f)]


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


# Files torch refuses (weights_only=True) or cannot read: named with the reason, never with torch's advice.
