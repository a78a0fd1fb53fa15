"""Modules that moved into the role packages keep their old names: `import pipeline.ledger` still gives
`pipeline.store.ledger` (the same module object, so patches and isinstance checks agree), for code and
notebooks written before the move. New code imports the new names; these aliases are not extended."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    **{m: f"run.{m}" for m in "runner feed decode_stage infer collector results upload aggregate ray_reaper".split()},
    **{m: f"decode.{m}" for m in "transforms watchdog bilinear".split()}, "probe": "decode.inspect",
    **{m: f"store.{m}" for m in "ledger ledger_state lease commit segments claims records retire".split()},
    "compact": "store.compaction", "sinks": "store", "sinks.hdf5": "store.hdf5", "sinks.parquet": "store.parquet",
    "sinks.publish": "store.publish",
    **{m: f"read.{m}" for m in "features task_dataset search neighbours verify status".split()},
    "model.presets": "presets", "thumbnails": "report.thumbnails", "svg": "report.svg", "clips": "plan.clips", "samples": "plan.samples",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `pipeline.<old>` and loads it as the module at its new name."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("pipeline.")
        if fullname.startswith("pipeline.") and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module("pipeline." + MOVED[spec.name.removeprefix("pipeline.")])

    def exec_module(self, module):
        pass                                    # the real module ran when it was imported by its new name


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Alias())         # before the path finder: `pipeline.sinks.publish` must not
                                                  # load store/publish.py a second time under the old name
