"""`vidfeat plan` (issue #21): on a generated mixed corpus every estimate holds the truth within its
stated error — video hours (estimated from a sample, exact from a duration column), clips, the share
that fails — and the mix, the decode rate, GPU-hours and the nodes by a deadline are filled in."""
from __future__ import annotations

import csv
import json
import math

import pytest

from pipeline.config import Config
from pipeline.corpus import load_corpus
from pipeline.decode import probe_video
from pipeline.decode.clips import plan_clips
from pipeline.synthetic.samples import write_index_video, write_random_bytes
from pipeline.cli.preflight import nodes_by_deadline, parse_hours, plan

from conftest import run_cli

VIDEOS = 40
TINY = Config.from_preset("tiny")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """40 videos: H.264 in MP4 and VP9 in WebM, 30/25 fps, 1–6 s, two sizes; 4 broken files."""
    root = tmp_path_factory.mktemp("mixed")
    rows = []
    for i in range(VIDEOS):
        broken = i % 10 == 3
        ext = "webm" if i % 4 == 1 else "mp4"
        path = str(root / f"v{i:02d}.{ext}")
        if broken:
            write_random_bytes(path, seed=i)
            rows.append({"uri": path, "video_id": f"v{i:02d}", "duration_s": 0.0})
            continue
        fps = 25.0 if i % 3 else 30.0
        frames = int(fps * (1 + (i * 7) % 6))
        write_index_video(path, frames, fps, width=64 if i % 2 else 96, height=48 if i % 2 else 64,
                          codec="libvpx-vp9" if ext == "webm" else "libx264")
        rows.append({"uri": path, "video_id": f"v{i:02d}", "duration_s": probe_video(path).duration_s})
    return root, rows


def write_manifest(path, rows, with_duration: bool) -> str:
    fields = ["video_id", "uri"] + (["duration_s"] if with_duration else [])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def true_clips(rows: list[dict], config: Config) -> int:
    """The clips the run would make: the clip plan of every good video (tiny sampling: a clip a 1.07 s,
    so the 1–6 s videos have 1–6 clips each and the clip estimate has a spread to get right)."""
    good = [probe_video(r["uri"]) for r in rows if r["duration_s"]]
    return sum(len(plan_clips(i.timestamps, i.duration_s, config.sampling)) for i in good)


def test_estimates_hold_the_truth_within_their_stated_error(mixed, tmp_path):
    root, rows = mixed
    corpus = load_corpus(write_manifest(tmp_path / "m.csv", rows, with_duration=False))
    truth_h = sum(r["duration_s"] for r in rows) / 3600
    truth_fail = sum(1 for r in rows if r["duration_s"] == 0) / VIDEOS
    truth_clips = true_clips(rows, TINY)
    covered = {"hours": 0, "fail": 0, "clips": 0}
    for seed in range(3):                                  # three different samples of 24
        r = plan(corpus, None, sample=24, decode=2, seed=seed, config=TINY)
        h, f, c = r["video_hours"], r["failures"], r["clips"]
        assert not h["exact"] and h["low"] <= h["value"] <= h["high"] and c["low"] < c["value"] < c["high"]
        covered["hours"] += h["low"] <= truth_h <= h["high"]
        covered["fail"] += f["low"] <= truth_fail <= f["high"]
        covered["clips"] += c["low"] <= truth_clips <= c["high"]
        assert set(r["mix"]["codec"]) <= {"h264", "vp9"} and set(r["mix"]["container"]) >= {"mov,mp4,m4a,3gp,3g2,mj2"}
        assert set(f["reasons"]) <= {"not_a_video", "corrupt", "empty"}
        assert all(v["rate"] > 0 for v in r["decode_s_per_video_s"].values())
    assert min(covered.values()) >= 2              # 95% intervals: nearly always hit (seeded: the same 3 samples)
    full = plan(corpus, None, sample=VIDEOS, decode=1, config=TINY)  # the whole corpus: no sampling error
    assert full["video_hours"]["value"] == pytest.approx(truth_h, rel=1e-9)
    assert full["video_hours"]["high"] - full["video_hours"]["low"] < 1e-9
    assert full["failures"]["share"] == truth_fail and full["clips"]["value"] == truth_clips


def test_the_command_uses_a_duration_column_a_gpu_rate_and_a_deadline(mixed, tmp_path):
    _, rows = mixed
    manifest = write_manifest(tmp_path / "m.csv", rows, with_duration=True)
    (tmp_path / "cluster.yaml").write_text(
        "available_node_types:\n  head: {resources: {CPU: 0}}\n  cpu: {resources: {decode: 64}}\n"
        "  gpu: {resources: {decode: 184, GPU: 8}}\n")
    done = run_cli("plan", manifest, "--sample", "10", "--decode", "1", "--gpu-clips-per-s", "2",
                   "--deadline", "90m", "--cluster", str(tmp_path / "cluster.yaml"), "--json",
                   str(tmp_path / "plan.json"))
    assert done.returncode == 0, done.stderr
    r = json.loads((tmp_path / "plan.json").read_text())
    hours = sum(row["duration_s"] for row in rows) / 3600
    assert r["video_hours"] == {"value": pytest.approx(hours), "low": pytest.approx(hours),
                                "high": pytest.approx(hours), "exact": True}
    assert r["gpu_hours"]["value"] == pytest.approx(r["clips"]["value"] / 2 / 3600)
    assert r["deadline_h"] == 1.5 and set(r["nodes"]) == {"gpu", "cpu"} and r["nodes"]["gpu"] >= 1
    assert "exact (manifest)" in done.stdout and "GPU-hours at 2 clips/s" in done.stdout


def test_nodes_cover_the_gpu_hours_and_the_decoding_left_over():
    report = {"gpu_hours": {"high": 100.0}, "decode_vcpu_hours": {"high": 10_000.0}}
    types = {"gpu": {"GPU": 8, "decode": 184}, "cpu": {"decode": 64}}
    nodes = nodes_by_deadline(report, types, deadline_h=10)
    assert nodes == {"gpu": 2, "cpu": math.ceil((1000 - 2 * 184) / 64)}
    assert parse_hours("8h") == 8 and parse_hours("90m") == 1.5 and parse_hours("2d") == 48


def test_a_duration_column_that_is_not_numbers_is_ignored_not_fatal(mixed, tmp_path):
    from pipeline.cli.preflight import manifest_durations

    _, rows = mixed
    bad = [{**r, "duration_s": "n/a" if i == 0 else r["duration_s"]} for i, r in enumerate(rows)]
    assert manifest_durations(write_manifest(tmp_path / "bad.csv", bad, with_duration=True), VIDEOS) is None
    good = manifest_durations(write_manifest(tmp_path / "good.csv", rows, with_duration=True), VIDEOS)
    assert good == pytest.approx([r["duration_s"] for r in rows])
