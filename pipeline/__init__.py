"""vidfeat: long-video TimeSformer feature extraction on Ray (see docs/ARCHITECTURE.md for the map).

The package is laid out by role: `run` (the Ray run), `decode` (videos to clips), `model` (the network),
`store` (the output and its commit protocol), `read` (readers of an output), `report` (the HTML report),
`synthetic` (the sample videos it makes) and `cli` (the command line, on top of them all); what every role
shares (config, presets, corpus, errors, storage, faults, text) lives at the top. The public
API is importable from here, loaded on first use so that `import pipeline` stays light:

    from pipeline import Config, run_extract, decode_clips, load_timesformer
    from pipeline import load_videos, load_clips, VideoIndex, TaskDataset
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_WHERE = {
    "Config": "pipeline.config", "run_extract": "pipeline.run.runner", "decode_clips": "pipeline.decode",
    "load_timesformer": "pipeline.model", "load_videos": "pipeline.read.features",
    "load_clips": "pipeline.read.features", "VideoIndex": "pipeline.read.search",
    "TaskDataset": "pipeline.read.task_dataset",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
