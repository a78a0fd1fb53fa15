"""`vidfeat dedup` end to end on generated videos with planted duplicates (re-encoded, resized, trimmed,
watermarked), embedded by the random-weight `tiny` model: the groups, the files and the report, and the
trade of precision for recall as the threshold grows (measured: BENCHMARKS.md, "Near-duplicates")."""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from featurekit import extract_video, tiny_config
from pipeline.cli import main
from pipeline.synthetic.duplicates import pair_quality, write_duplicate_set
from pipeline.run.infer import ClipEmbedder
from pipeline.store.commit import provenance, write_part
from pipeline.store.ledger import Ledger


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """An output of a planted set (12 videos: 2 families of 5, 2 partners), committed in two parts."""
    root = tmp_path_factory.mktemp("dedup")
    videos = write_duplicate_set(str(root / "videos"), seconds=3.0, bases=2)
    config = tiny_config()
    embedder, prov = ClipEmbedder(config.to_dict()), provenance(config, "sha", "fp", "dedup")
    events = [extract_video(os.path.basename(p.path)[:-4], p.path, config, embedder) for p in videos]
    out, ledger = str(root / "out"), Ledger(str(root / "out"))
    for n, chunk in enumerate((events[:6], events[6:])):
        rows = [{**video, **prov} for video, _ in chunk]
        write_part(ledger, f"part-{n}", rows, {v["video_id"]: clips for v, clips in chunk}, [], prov)
        ledger.record(f"part-{n}", [v["video_id"] for v in rows], [], uris=[v["uri"] for v in rows])
    return out, {os.path.basename(p.path)[:-4]: p.family for p in videos}


def groups(out: str, threshold: float, capsys, *extra: str) -> tuple[dict, dict]:
    assert main(["dedup", out, "--threshold", str(threshold), "--json", *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    table = pq.read_table(os.path.join(out, "dedup", f"{report['kind']}-t{threshold:g}.parquet"))
    return report, table


def test_planted_duplicates_are_grouped_and_the_threshold_trades_precision_for_recall(planted, capsys):
    out, family_of = planted
    measured = {}
    for threshold in (0.0005, 0.002, 0.005, 0.01, 0.05):
        report, table = groups(out, threshold, capsys)
        group_of = dict(zip(table.column("video_id").to_pylist(), table.column("group").to_pylist()))
        measured[threshold] = pair_quality(group_of, family_of)
        assert report["members"] == table.num_rows == len(group_of)
        assert report["vectors"] == 12 and report["how"].startswith("exact: ")
    precision, recall = zip(*measured.values())
    assert list(recall) == sorted(recall) and recall[-1] == 1.0, measured      # looser: every duplicate found
    assert precision[0] == 1.0 and precision[-1] < 1.0, measured              # ... and partners join them


def test_the_files_and_the_report_say_what_was_covered(planted, capsys):
    out, _ = planted
    report, table = groups(out, 0.01, capsys)
    names = set(os.listdir(os.path.join(out, "dedup")))
    assert {"videos-t0.01.json", "videos-t0.01.parquet"} <= names and not [n for n in names if n.startswith(".")]
    with open(os.path.join(out, "dedup", "videos-t0.01.json")) as fh:
        saved = json.load(fh)
    assert saved["segments"] == ["part-0", "part-1"] and saved["done"] == 12 and saved["groups"] == report["groups"]
    assert table.column_names == ["group", "video_id", "uri", "similarity"]
    firsts = table.group_by("group").aggregate([("similarity", "max")]).column("similarity_max").to_pylist()
    assert all(abs(s - 1) < 1e-5 for s in firsts)                     # the first member scores itself


def test_moments_are_grouped_with_clips(planted, capsys):
    out, _ = planted
    report, table = groups(out, 0.002, capsys, "--clips")
    assert report["kind"] == "clips" and report["vectors"] > 12
    assert {"video_id", "clip_index", "start_s", "end_s", "group"} <= set(table.column_names)
    assert report["groups"] >= 1


def test_a_threshold_out_of_range_is_refused(planted, capsys):
    out, _ = planted
    assert main(["dedup", out, "--threshold", "3"]) == 2
    assert "cosine distance" in capsys.readouterr().err
