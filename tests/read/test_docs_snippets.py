"""Every python code block of docs/USING_FEATURES.md runs against a generated output directory.

Blocks run one by one, each in a fresh namespace holding only `OUT` (the output directory) and `LABELS`
(its labels csv), in a temporary working directory: a snippet must stand alone, as a reader copies it.
"""
from __future__ import annotations

import os
import re

import pytest

from featurekit import shared_output

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "USING_FEATURES.md")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: str = DOC) -> list[str]:
    with open(path) as fh:
        return BLOCK.findall(fh.read())


BLOCKS = python_blocks()


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return shared_output(tmp_path_factory)


def test_the_page_covers_every_way_in():
    text = "\n".join(BLOCKS)
    for module in ("pandas", "pyarrow", "duckdb", "h5py", "torch", "pipeline.read.features", "pipeline.read.search"):
        assert re.search(rf"^(import|from) {re.escape(module)}\b", text, re.M), module


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_snippet_runs(code, kit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{DOC}:snippet", "exec"), {"OUT": kit.out, "LABELS": kit.labels, "__name__": "__snippet__"})
