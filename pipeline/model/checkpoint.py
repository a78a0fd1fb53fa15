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
import io
import logging
import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Iterator, Mapping

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


def read_checkpoint(source: str, cache_dir: str | None = None, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) of a path or fsspec URL (remote files cached locally).

    `mmap=True` maps a zip-format file (torch ≥ 1.6) instead of reading it: tensors keep their shapes
    and dtypes but their bytes stay on disk until touched (legacy files are read as usual).
    """
    local = _local_copy(source, cache_dir)
    try:
        with warnings.catch_warnings():              # "Detected pickle protocol 4 ... please file an issue"
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(local, map_location="cpu", weights_only=True, mmap=mmap and _is_zip(local))
    except MemoryError:
        raise
    except Exception as exc:                                     # noqa: BLE001 - reported with the file name
        raise CheckpointError(_load_failure(source, exc, local)) from None
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


SHOWN = 10          # keys named per kind of problem; the rest are counted


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
        problems.append(f"missing keys {_some(missing, quote=True)}")
    if unexpected:
        problems.append(f"unexpected keys {_some(unexpected, quote=True)}")
    if shapes:
        problems.append(f"shape mismatches {_some(shapes)}")
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


def _some(items: list[str], quote: bool = False, n: int = SHOWN, sep: str = "; ") -> str:
    """At most `n` items, then how many more: "['a', 'b'] and 12 more (14 in all)" / "a; b and 12 more"."""
    shown = repr(list(items[:n])) if quote else sep.join(map(str, items[:n]))
    return shown + (f" and {len(items) - n} more ({len(items)} in all)" if len(items) > n else "")


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

_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)    # first bytes of a torch < 1.6 file
_ZIP_MAGIC = b"PK\x03\x04"                                           # torch ≥ 1.6 files are zip archives
_REFUSED = (                    # torch's words (2.4 … 2.14) for a pickle that names more than tensors
    re.compile(r"GLOBAL (\S+) was not an allowed global"),                     # not on the allowlist
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),       # os, posix, subprocess, ...
    re.compile(r"reduce for unrecognized function (.+?)(?: which belongs to .*)?$", re.M),
    re.compile(r"Can only (?:create new object|build) .*? but got (.+?)$", re.M),
)
_ADVICE = re.compile(r"weights_only|safe_globals|Check the documentation|Please file an issue|"
                     r"do those steps only|trusted source", re.I)
_PICKLES_PER_FILE = 5           # a legacy torch file is 5 pickles in a row, then raw storage bytes
_MAX_PICKLE_SCAN = 64 << 20     # a zip member data.pkl larger than this is not scanned for names


def _load_failure(source: str, exc: BaseException, local: str | None = None) -> str:
    """Why `source` (read from `local`) did not load, in words a person can act on: refused (a pickle that
    would run or build Python objects: the globals it names), empty, truncated or damaged, or not a
    checkpoint (text, another zip, other bytes). torch's own advice is never quoted: it suggests
    weights_only=False, which would run the file's code."""
    path = local or source
    size, head = _size_and_head(path)
    if size == 0:
        return f"{source} is empty (0 bytes), not a checkpoint: an interrupted download or copy?"
    if size < 0:
        return f"{source} is not a readable torch checkpoint ({_torch_detail(exc)})"
    refused = _refused_globals(exc, path)
    if refused:
        named = _some(refused, sep=", ")
        return (f"{source} is refused: it is a pickle that would run or build Python objects ({named}); "
                "vidfeat loads checkpoints with weights_only=True and accepts only tensors and plain containers: "
                "re-save it as a plain state dict (torch.save(model.state_dict(), path)) in a trusted environment")
    detail = _torch_detail(exc)
    if head.startswith(_ZIP_MAGIC):
        return _zip_failure(source, path, size, detail, exc)
    if head.startswith(_LEGACY_MAGIC) or (len(head) < len(_LEGACY_MAGIC) and _LEGACY_MAGIC.startswith(head)):
        how = "truncated: its data ends early" if _ends_early(exc) else "damaged"
        return f"{source} is {how} (a torch checkpoint in the legacy format, {size:,} bytes; {detail})"
    text = _text_start(head)
    if text is not None:
        return f"{source} is not a torch checkpoint: it is text, beginning {text!r}{_text_hint(text)}"
    if _pickle_protocol(head) in (2, 3, 4, 5):
        return (f"{source} is not a torch checkpoint: a Python pickle (protocol {head[1]}) that holds no tensors "
                f"torch can read safely ({detail})")
    return f"{source} is not a torch checkpoint (it begins with bytes {head[:8].hex(' ')}; {detail})"


def _zip_failure(source: str, path: str, size: int, detail: str, exc: BaseException) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
            protocol = _pickle_protocol(archive.open(pickles[0]).read(2)) if pickles else None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return (f"{source} is truncated or damaged: it starts as a zip archive (the torch checkpoint format) but its "
                f"zip directory, at the end of the file, is missing ({size:,} bytes): an interrupted download or copy?")
    if not pickles:
        return f"{source} is a zip archive, not a torch checkpoint (it holds {_preview(names)})"
    if isinstance(exc, pickle.UnpicklingError) and protocol not in (None, 2):
        return (f"{source} is a torch checkpoint saved with pickle protocol {protocol}, which torch's safe loader "
                f"cannot read ({detail}): re-save it with torch.save's default protocol (2)")
    return f"{source} is a damaged torch checkpoint ({size:,} bytes; {detail})"


def _pickle_protocol(start: bytes) -> int | None:
    return start[1] if len(start) > 1 and start[0] == 0x80 else None


def _refused_globals(exc: BaseException, path: str) -> list[str]:
    """The Python objects a refused pickle names: from torch's message, then from reading the pickle's
    opcodes ourselves (torch ≤ 2.14 only says "Unsupported operand" for protocol 4/5 pickles)."""
    text = str(exc)
    names = [m.group(1).strip() for pattern in _REFUSED for m in pattern.finditer(text)]
    names = [n if "." in n or n.startswith("<") else f"builtins.{n}" for n in names]   # torch drops "builtins."
    if names or isinstance(exc, pickle.UnpicklingError):
        names += _unsafe(_pickle_globals(path))
    return list(dict.fromkeys(names))


def _unsafe(names: list[str]) -> list[str]:
    """`names` less those torch's weights-only unpickler allows (tensor rebuilders, OrderedDict, ...)."""
    try:
        from torch import _weights_only_unpickler as wo                   # private: only narrows a message
        allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    except Exception:                                                     # noqa: BLE001
        allowed = set()
    return [n for n in names if n not in allowed]


def _pickle_globals(path: str) -> list[str]:
    """Every `module.name` the pickles in `path` would import, read with pickletools (nothing runs): the
    `data.pkl` of a zip archive, else up to _PICKLES_PER_FILE pickles from the start of the file. Only
    pickles that read to their STOP count, so random bytes name nothing."""
    names: list[str] = []
    try:
        for stream in _pickle_streams(path):
            for _ in range(_PICKLES_PER_FILE):
                found = _globals_of_one_pickle(stream)
                if found is None:
                    break
                names += found
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        pass
    return names


def _pickle_streams(path: str) -> Iterator[Any]:
    if _is_zip(path) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith("data.pkl") and info.file_size <= _MAX_PICKLE_SCAN:
                    yield io.BytesIO(archive.read(info))
    else:
        with open(path, "rb") as fh:
            yield fh


def _globals_of_one_pickle(stream: Any) -> list[str] | None:
    """The globals one pickle names (GLOBAL, INST, STACK_GLOBAL with its two strings), or None when the
    bytes are not one whole pickle."""
    import pickletools
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    names: list[str] = []
    memo: dict[int, Any] = {}
    pushed: list[Any] = []                                  # recent values; strings matter for STACK_GLOBAL
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                if (module, name) in NAME_MAPPING:
                    module, name = NAME_MAPPING[(module, name)]
                module = IMPORT_MAPPING.get(module, module)
                names.append(f"{module}.{name}")
                pushed.append(None)
            elif op.name == "STACK_GLOBAL":
                module, name = (pushed[-2:] if len(pushed) >= 2 else [None, None])
                names.append(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "?")
                pushed.append(None)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif op.stack_after:
                pushed.append(arg if isinstance(arg, str) else None)
            del pushed[:-4]
    except Exception:                                        # noqa: BLE001 - not a pickle (or not whole)
        return None
    return names


def _torch_detail(exc: BaseException) -> str:
    """torch's own reason, first sentence only, without its advice (weights_only=False, allowlists, docs)."""
    lines = [ln.strip(" \t.") for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln and not _ADVICE.search(ln)]
    reason = ""
    if lines:
        reason = re.split(r"(?<=[a-z)])\.\s+(?=[A-Z])", lines[0])[0]
        reason = re.sub(r"\s*\(Could this error message be improved\?.*", "", reason).strip()
    name = type(exc).__name__
    return f"{name}: {reason[:200]}" if reason else name


def _ends_early(exc: BaseException) -> bool:
    return isinstance(exc, (EOFError, IndexError)) or "unexpected EOF" in str(exc) or "truncated" in str(exc)


def _size_and_head(path: str, n: int = 512) -> tuple[int, bytes]:
    try:
        with open(path, "rb") as fh:
            return os.fstat(fh.fileno()).st_size, fh.read(n)
    except OSError:
        return -1, b""


def _is_zip(path: str) -> bool:
    return _size_and_head(path, 4)[1] == _ZIP_MAGIC


def _text_start(head: bytes) -> str | None:
    """The first line of `head` when it reads as text (UTF-8, printable), else None."""
    if b"\x00" in head:
        return None
    text = head.decode("utf-8", "ignore")
    if not text or sum(c.isprintable() or c in "\r\n\t" for c in text) < 0.97 * len(text):
        return None
    first = text.strip().splitlines()[0] if text.strip() else text
    return first[:60] + ("…" if len(first) > 60 else "")


def _text_hint(text: str) -> str:
    low = text.lower()
    if low.startswith("version https://git-lfs"):
        return " (a Git LFS pointer, not the file: fetch it with `git lfs pull`)"
    if low.startswith(("<!doctype html", "<html", "<?xml", "{")):
        return " (an error page or a response saved in place of the file?)"
    return ""


def _preview(mapping: Mapping, n: int = 6) -> str:
    keys = list(mapping)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(map(str, keys[:n])) + more
