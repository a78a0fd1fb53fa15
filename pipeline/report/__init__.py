"""`vidfeat report`: one self-contained HTML page about an output (`page`), its charts (`svg`) and the
video thumbnails it shows (`thumbnails`, through the decode package's `open_video`).

May import: `read`, `store`, `decode` (thumbnails), config, errors, text. Nothing imports the report.
"""
from __future__ import annotations

import importlib


def __getattr__(name: str):
    """The page's names (`write_report`, `gather`, …) from the package, as before it was one."""
    return getattr(importlib.import_module("pipeline.report.page"), name)
