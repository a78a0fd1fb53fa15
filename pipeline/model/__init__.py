"""The TimeSformer network, its checkpoint loading and its presets.

Names are loaded on first use (PEP 562): `pipeline.config` reads the presets through this package, and
decode workers import the config without torch (`pipeline.model.presets` needs none).
"""
from __future__ import annotations

import importlib

_WHERE = {
    "check_checkpoint": "checkpoint", "checkpoint_sha256": "checkpoint", "load_timesformer": "checkpoint",
    "random_timesformer": "checkpoint", "to_timesformer_keys": "checkpoint", "DEFAULT_PRESET": "presets",
    "PRESETS": "presets", "Preset": "presets", "get_preset": "presets", "TimeSformer": "timesformer",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
