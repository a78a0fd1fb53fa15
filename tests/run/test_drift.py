"""Manifest drift (issue #16): a committed id whose uri changed is reported, and `--redo-changed`
extracts it again with its old rows retired atomically; one uri under several ids is warned about."""
from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.index.build import build_index
from pipeline.read.features import load_videos
from pipeline.read.search import VideoIndex

from pipeline.read.parts import read_table
from pipeline.store.ledger import Ledger
from pipeline.run.runner import run_extract
from pipeline.read.status import status
from pipeline.read.verify import verify

from conftest import run_cli
from test_hostile_ids import hdf5_ids


def manifest(path, rows: dict[str, str]) -> str:
    pq.write_table(pa.table({"video_id": list(rows), "uri": list(rows.values())}), path)
    return str(path)


def embeddings(out: str) -> dict[str, np.ndarray]:
    videos = load_videos(out)
    return dict(zip(videos.ids, videos.embedding))


def test_changed_uris_are_reported_then_redone_exactly_once(head_config, corpus, tmp_path, caplog):
    a, b, c = (os.path.join(corpus["dir"], name) for name in corpus["good"][:3])
    config = head_config
    out = str(tmp_path / "out")
    first = run_extract(manifest(tmp_path / "m1.parquet", {"x": a, "y": b, "z": c}), out, config, progress=False)
    assert (first.ok, first.changed) == (3, 0)
    before = embeddings(out)
    build_index(out)                                 # a search index the redo must keep right

    drifted = manifest(tmp_path / "m2.parquet", {"x": c, "y": b, "z": c})
    kept = run_extract(drifted, out, config, progress=False)
    assert (kept.ok, kept.skipped, kept.changed) == (0, 3, 1) and not kept.redone_changed
    assert kept.changed_videos == [{"video_id": "x", "uri": c, "committed_uri": a}]
    assert "1 committed video(s) have another uri" in caplog.text
    assert status(out, source=drifted)["changed"] == 1
    shown = run_cli("status", out, "--source", drifted, timeout=120)
    assert shown.returncode == 0 and "changed: 1 committed video(s)" in shown.stdout
    assert f"changed: x: {a} -> {c}" in shown.stdout

    redone = run_extract(drifted, out, config.replace(run={"redo_changed": True}), progress=False)
    assert (redone.ok, redone.skipped, redone.changed, redone.redone_changed) == (1, 2, 1, True)
    rows = read_table(out, "videos", ["video_id", "uri"]).to_pylist()
    assert sorted((r["video_id"], r["uri"]) for r in rows) == sorted([("x", c), ("y", b), ("z", c)])
    after = embeddings(out)
    np.testing.assert_array_equal(after["x"], after["z"])          # x is now the video z is
    np.testing.assert_array_equal(after["y"], before["y"])
    assert not np.array_equal(after["x"], before["x"])
    assert hdf5_ids(out) == {"x": c, "y": b, "z": c}
    assert verify(out)["ok"] and Ledger(out).load().done == {"x", "y", "z"}
    index = VideoIndex.from_output(out)              # kept right by the run: x's old row never counts again
    assert index.approximate is not None and len(index) == 3 and "covers all 3" in index.how
    x = index.approximate.vectors(np.array([index.row["x"]]))[0]
    np.testing.assert_allclose(x, after["x"] / np.linalg.norm(after["x"]), atol=1e-6)

    again = run_extract(drifted, out, config.replace(run={"redo_changed": True}), progress=False)
    assert (again.ok, again.skipped, again.changed) == (0, 3, 0)
    assert status(out, source=drifted)["changed"] == 0


def test_one_uri_under_several_ids_is_warned_about_naming_them(tmp_path, caplog):
    from pipeline.corpus import load_corpus

    with caplog.at_level(logging.WARNING):
        load_corpus(manifest(tmp_path / "m.parquet", {"p": "/v/1.mp4", "q": "/v/1.mp4", "r": "/v/2.mp4"}))
    assert "/v/1.mp4" in caplog.text and "'p'" in caplog.text and "'q'" in caplog.text
