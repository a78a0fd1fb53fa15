"""`vidfeat report` (pipeline.report.page, pipeline.report.svg, pipeline.report.thumbnails) on real and hand-made outputs:
what the page holds, tolerant run records, failures only, one video, unreadable videos, fsspec and S3.
No Ray here; the page in a real browser is tested in test_demo.py."""
from __future__ import annotations

import json
import math
import os
import shutil
from html.parser import HTMLParser

import fsspec
import numpy as np
import pytest

from featurekit import GHOST, shared_output
from pipeline.report import svg
from pipeline.errors import ConfigError
from pipeline.store.ledger import Ledger
from pipeline.read.neighbours import nearest_videos
from pipeline.report.page import failure_groups, gather, neighbour_gallery, render, write_report
from pipeline.store.commit import write_part
from pipeline.synthetic.samples import write_index_video
from pipeline.read.search import VideoIndex
from pipeline.report.thumbnails import strip_data_uri, thumbnail_strip
from partkit import PROV

from conftest import run_cli


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return shared_output(tmp_path_factory)


class Page(HTMLParser):
    """What a test checks of a page: tags used, image sources, visible text, external references."""

    def __init__(self, html: str):
        super().__init__()
        self.tags, self.images, self.text, self.refs = set(), [], [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        self.refs += [v for k, v in attrs.items() if k in ("src", "href") and v and not v.startswith("data:")]

    def handle_data(self, data):
        self.text.append(data)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def run_record(out: str, run_id: str, summary: dict, **extra) -> None:
    fs, root = fsspec.core.url_to_fs(out)
    fs.makedirs(f"{root}/runs", exist_ok=True)
    with fs.open(f"{root}/runs/{run_id}.json", "w") as fh:
        json.dump({"source": "/videos", "config": {"model": {"checkpoint": "random"}}, "summary": summary, **extra}, fh)


FULL = {"ok": 12, "failed": 1, "skipped": 0, "total": 13, "clips": 30, "video_hours": 0.01, "wall_s": 36.0,
        "decode_s": 5.0, "infer_s": 2.0, "commit_s": 0.5, "devices": ["cpu"], "video_s_per_s": 1.0}


@pytest.fixture
def kit_with_runs(kit, tmp_path):
    """A copy of the featurekit output with three run records: complete, with fields missing and added
    (a newer writer), and one that is not JSON."""
    out = str(tmp_path / "out")
    shutil.copytree(kit.out, out)
    run_record(out, "20260101T000000-aaaaaa", FULL)
    run_record(out, "20260102T000000-bbbbbb", {"ok": 6, "clips": 12, "new_field": [1, 2]}, extra_top="x")
    with open(f"{out}/runs/20260103T000000-cccccc.json", "w") as fh:
        fh.write("{not json")
    return out


def test_page_of_a_real_output(kit, kit_with_runs):
    data = gather(kit_with_runs, queries=3, k=4)
    page = Page(render(data))
    words = page.words
    assert [r["run_id"] for r in data.runs] == ["20260101T000000-aaaaaa", "20260102T000000-bbbbbb"]
    assert "20260103T000000-cccccc.json: not a readable run record" in words
    assert "2026-01-01 00:00:00" in words and "–" in words                   # missing fields shown as –
    assert "random model weights" in words
    assert data.videos["video_id"] == kit.ids and GHOST not in words           # committed videos only
    assert [g["kind"] for g in data.failures] == ["not_found"] and "broken" in words
    assert len(data.gallery) == 3 and all(len(q["neighbours"]) == 4 for q in data.gallery)
    assert len(page.images) == 3 * (1 + 4)                                      # one strip per cell
    assert all(src.startswith("data:image/jpeg;base64,") for src in page.images)
    assert page.refs == [] and not {"script", "link", "iframe"} & page.tags   # self-contained
    assert page.words.count("Throughput per run") == 1 and "Clips per video" in words


def test_gallery_is_the_cosine_search(kit):
    gallery = neighbour_gallery(kit.out, queries=4, k=3)
    index = VideoIndex.from_output(kit.out)
    queries = [q["video_id"] for q in gallery]
    assert queries[0] == kit.ids[0] and queries[-1] == kit.ids[-1]             # spread over the commit order
    hits = index.search_ids(queries, k=3)
    for q, query in enumerate(gallery):
        assert [n["video_id"] for n in query["neighbours"]] == hits.ids[q]
        scores = [n["score"] for n in query["neighbours"]]
        assert scores == sorted(scores, reverse=True) and query["video_id"] not in hits.ids[q]


def test_neighbours_part_by_part_equal_the_whole_index(tmp_path):
    videos = {f"v{i:02d}": f"/videos/{i}.mp4" for i in range(23)}
    out = hand_made_output(tmp_path, videos, [], sizes=(1, 7, 1, 2, 12))       # parts of one video too
    index = VideoIndex.from_output(out)
    queries = ["v00", "v08", "v10", "v22"]                                     # v00 and v08: parts of one
    for k in (1, 5, 22, 30):
        hits, whole = nearest_videos(out, queries, k=k), index.search_ids(queries, k=k)
        assert hits.ids == whole.ids and hits.uris == whole.uris and hits.indices.tolist() == whole.indices.tolist()
        np.testing.assert_allclose(hits.scores, whole.scores, atol=1e-6)   # float32 dot products
        assert hits.scores.shape == (4, min(k, 22))
    assert nearest_videos(out, [], k=3).ids == []


def test_each_part_is_searched_once_for_all_queries(tmp_path, monkeypatch):
    videos = {f"v{i:02d}": f"/videos/{i}.mp4" for i in range(23)}
    out = hand_made_output(tmp_path, videos, [], sizes=(1, 7, 1, 2, 12))
    calls = []
    search = VideoIndex.search
    monkeypatch.setattr(VideoIndex, "search", lambda self, q, *a, **kw: calls.append(len(q)) or search(self, q, *a, **kw))
    nearest_videos(out, ["v00", "v08", "v10", "v22"], k=5)
    # 5 parts; in the 4 that hold a query the queries inside and the others go separately
    assert len(calls) == 5 + 4 and sum(calls) == 5 * 4


def test_failure_groups_count_by_stage_and_kind():
    failures = [{"video_id": f"v{i}", "stage": "decode", "error": f"not_found: no file {i}"} for i in range(5)]
    failures += [{"video_id": "x", "stage": "infer", "error": "unexpected: RuntimeError: boom"},
                 {"video_id": "y", "stage": None, "error": None}]
    groups = failure_groups(failures)
    assert [(g["stage"], g["kind"], g["count"]) for g in groups] == [
        ("decode", "not_found", 5), ("?", "unknown", 1), ("infer", "unexpected", 1)]
    assert [f["video_id"] for f in groups[0]["examples"]] == ["v0", "v1", "v2"]


def hand_made_output(root, videos: dict[str, str], failures: list[dict], sizes: tuple[int, ...] = ()) -> str:
    """An output of committed parts of `sizes` videos each (one part of all by default): `videos` id → uri
    (random 8-d features); the first part also records `failures`."""
    out = str(root / "out")
    rng = np.random.default_rng(0)
    ids = list(videos)
    for p, start in enumerate(np.cumsum((0, *(sizes or (len(ids),))))[:-1]):
        part_ids = ids[start:start + (sizes or (len(ids),))[p]]
        rows, clips = [], {}
        for vid in part_ids:
            emb, logits = rng.normal(size=8).astype(np.float32), rng.normal(size=3).astype(np.float32)
            clips[vid] = [{"video_id": vid, "clip_index": 0, "start_s": 0.0, "end_s": 1.0, "valid_frames": 4,
                           "frame_indices": [0, 1, 2, 3], "embedding": emb, "logits": logits}]
            rows.append({"video_id": vid, "uri": videos[vid], "num_clips": 1, "duration_s": 1.0, "embedding": emb,
                         "logits": logits, "probs": np.full(3, 1 / 3, np.float32), **PROV})
        part_failures = failures if p == 0 else []
        write_part(Ledger(out), f"part-r-{p:05d}", rows, clips, part_failures, PROV)
        Ledger(out).record(f"part-r-{p:05d}", part_ids, part_failures)
    return out


def test_output_with_failures_only(tmp_path):
    failures = [{"video_id": "gone.mp4", "uri": "/gone.mp4", "stage": "decode", "error": "not_found: no such file",
                 "run_id": "r"}]
    out = hand_made_output(tmp_path, {}, failures)
    html = tmp_path / "r.html"
    assert run_cli("report", out, "--html", str(html)).returncode == 0
    words = Page(html.read_text()).words
    assert "gone.mp4 : not_found: no such file" in words and "No committed video." in words
    assert "nothing to show" in words and "No run record" in words


def test_single_video_and_an_unreadable_one(tmp_path):
    one = write_index_video(str(tmp_path / "one.mp4"), 45, 30.0, rotation=90)
    out = hand_made_output(tmp_path, {"one": one}, [])
    page = Page(render(gather(out)))
    assert len(page.images) == 1 and "no other video to compare with" in page.words
    assert thumbnail_strip(one, count=2, height=40).shape == (40, 2 * 30 + 2, 3)   # upright: 48x64 → 30 wide
    os.remove(one)
    words = Page(render(gather(out))).words
    assert "no preview not_found" in words                                      # a placeholder, not a crash
    assert strip_data_uri(str(tmp_path))[1].startswith("not_a_video")


def test_not_an_output_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a vidfeat output directory"):
        gather(str(tmp_path))
    done = run_cli("report", str(tmp_path / "typo"))
    assert done.returncode == 2 and "not a vidfeat output directory" in done.stderr


def test_memory_filesystem_in_and_out(kit):
    fs = fsspec.filesystem("memory")
    fs.put(kit.out, "/report-copy/out", recursive=True)
    try:
        target = write_report("memory://report-copy/out", queries=2, k=2)
        assert target == "memory://report-copy/out/report.html"
        page = Page(fs.cat(target).decode())
        assert len(page.images) == 2 * 3 and "broken" in page.words
    finally:
        fs.rm("/report-copy", recursive=True)


def test_s3_output(s3, kit):
    s3["fs"].put(kit.out, f"{s3['bucket']}/report/out", recursive=True)
    url = f"s3://{s3['bucket']}/report/out"
    run_record(url, "20260101T000000-aaaaaa", FULL)
    target = write_report(url, queries=1, k=2)
    s3["fs"].invalidate_cache()
    page = Page(s3["fs"].cat(target.removeprefix("s3://")).decode())
    assert len(page.images) == 3 and "20260101T000000-aaaaaa" in page.words


def test_svg_charts_are_well_formed():
    for chart in (svg.histogram([1, 2, 2, 3], "h", "x", integer=True), svg.histogram([0.5] * 3, "h", "x"),
                  svg.histogram([], "empty", "x"), svg.bar_chart(["1", "2"], {"a": [1, 2], "b": [0, 3]}, "b", "s"),
                  svg.histogram(np.random.default_rng(0).exponential(100, 500), "<&>", "x")):
        page = Page(chart)
        assert page.tags >= {"svg", "text"} and "<&>" not in chart.replace("&lt;&amp;&gt;", "")
    counts = Page(svg.histogram([1, 2, 2, 3], "h", "x", integer=True))
    assert "1 2 3" in counts.words                                             # one bin per whole number


@pytest.mark.parametrize("high", [1, 3, 7, 13, 97, 0.37, 1234, 5e6, 0.004, 42.5])
def test_axis_ticks_are_round_and_cover_the_data(high):
    from pipeline.report.svg import nice_ticks

    ticks = nice_ticks(high)
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert ticks[0] == 0 and ticks[-1] >= high and len(ticks) <= 6
    assert any(abs(mantissa - b) < 1e-9 for b in (1, 2, 2.5, 5))
    assert all(abs(t - i * step) < 1e-9 * max(1.0, high) for i, t in enumerate(ticks))


@pytest.mark.parametrize("values", [[8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0103, 8.0167], [0.3, 5, 42, 97.2],
                                    list(np.random.default_rng(1).exponential(300, 400)), [3.0, 3.2, 3.9]])
def test_histogram_bins_are_round_and_their_labels_distinct(values):
    from pipeline.report.svg import round_edges

    edges, decimals = round_edges(min(values), max(values), 8)
    step = edges[1] - edges[0]
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    assert any(abs(mantissa - b) < 1e-6 for b in (1, 2, 2.5, 5)) and len(edges) - 1 <= 8
    assert edges[0] <= min(values) and edges[-1] >= max(values)
    assert all(abs(e / step - round(e / step)) < 1e-6 for e in edges)             # multiples of the width
    page = Page(svg.histogram(values, "h", "seconds", bins=8))
    labels = [w for w in page.words.split() if w[0].isdigit()]
    shown = [f"{e:.{decimals}f}" if decimals else svg._number(e) for e in edges[:-1]]
    assert len(set(shown)) == len(shown) and set(shown) <= set(labels)           # 8, 8, 8.01 … no more
