"""The TimeSformer network (`timesformer`), its checkpoint loading (`checkpoint`, `checkpoint_diagnosis`),
its inference speed-ups (`accel`) and limits (`limits`); the presets it is built from live in
`pipeline.presets` (shared with the config) and are re-exported here.

Names are loaded on first use (PEP 562), so `import pipeline.model` does not import torch.
May import: config, presets, errors; torch, timm, einops, fsspec. Never a decoder, the store, the run or
Ray: the model knows nothing of videos, outputs or clusters.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "check_checkpoint": "checkpoint", "checkpoint_sha256": "checkpoint", "load_timesformer": "checkpoint",
    "random_timesformer": "checkpoint", "to_timesformer_keys": "checkpoint_keys", "DEFAULT_PRESET": "presets",
    "PRESETS": "presets", "Preset": "presets", "get_preset": "presets", "TimeSformer": "timesformer",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    where = "pipeline.presets" if _WHERE[name] == "presets" else f"{__name__}.{_WHERE[name]}"
    return getattr(importlib.import_module(where), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
