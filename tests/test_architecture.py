"""The layering holds: import-linter's contracts (pyproject.toml, [tool.importlinter]) are kept, each module
has one name (the old flat names are gone), and the public API is importable from `pipeline`."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys

import pytest

try:
    import tomllib
except ModuleNotFoundError:                     # Python 3.10: import-linter's own TOML reader
    import tomli as tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "kept" in proc.stdout


def top_level() -> set[str]:
    """`pipeline.<name>` for every module and package at the top of the package."""
    top = os.path.join(ROOT, "pipeline")
    return {f"pipeline.{name.removesuffix('.py')}" for name in os.listdir(top)
            if (name.endswith(".py") and not name.startswith("__"))
            or os.path.isfile(os.path.join(top, name, "__init__.py"))}


@pytest.mark.parametrize("top, name_start", [("pipeline.cli", "Nothing below the command line"),
                                             ("pipeline.report", "Nothing but the command line")])
def test_the_top_layers_are_guarded_from_every_module_below(top, name_start):
    """The contracts that keep the command line (and the report) on top name every other top-level module
    and package as a source, so a module added later cannot import them unnoticed."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        contracts = tomllib.load(fh)["tool"]["importlinter"]["contracts"]
    contract, = (c for c in contracts if c["name"].startswith(name_start))
    above = {"pipeline.cli", top}
    assert set(contract["source_modules"]) == top_level() - above
    assert contract["forbidden_modules"] == [top]


@pytest.mark.parametrize("old", ["pipeline.ledger", "pipeline.compact", "pipeline.sinks.publish",
                                 "pipeline.features", "pipeline.probe", "pipeline.model.presets"])
def test_a_module_has_one_name(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_the_public_api_is_importable_from_the_package():
    import pipeline

    for name in ("load_timesformer", "load_videos", "load_clips", "VideoIndex", "TaskDataset", "run_extract",
                 "decode_clips", "Config"):
        assert callable(getattr(pipeline, name)), name
    with pytest.raises(AttributeError):
        pipeline.no_such_name


def test_importing_the_package_imports_neither_torch_nor_ray():
    code = "import sys, pipeline; print(sorted(m for m in ('torch', 'ray', 'av') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_no_module_outgrows_a_room():
    """One concept a module: none over 300 lines (split by concept, not by count, when one grows)."""
    big = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "pipeline")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as fh:
                    lines = sum(1 for _ in fh)
                if lines > 300:
                    big[os.path.relpath(path, ROOT)] = lines
    assert not big, big
