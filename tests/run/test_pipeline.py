"""The pipeline end to end on Ray with the tiny preset and generated videos.

Runs join a real `ray start --head` cluster on 127.0.0.1 that declares two logical GPUs (see
conftest.py); one run uses the embedded local Ray of `vidfeat extract` with no address.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import schemas
from pipeline.decode import decode_clips
from pipeline.index.build import build_index
from pipeline.read.parts import read_table
from pipeline.read.search import VideoIndex
from pipeline.model import load_timesformer
from pipeline.run.runner import run_extract
from pipeline.decode.transforms import crop, to_model_input
from pipeline.read.verify import verify

from conftest import answers, ray_env, run_cli, wait_for

D, C = 64, 10          # tiny preset


def reference_clip_features(uri: str, config) -> list[tuple[np.ndarray, np.ndarray]]:
    """What the pipeline must produce for one video: decode, centre crop, normalise, model — directly."""
    model = load_timesformer("random", preset="tiny")
    out = []
    for clip in decode_clips(uri, config):
        frames = torch.from_numpy(np.stack(crop(clip.frames, config.preprocess.size, 1)))
        with torch.inference_mode():
            emb = model.forward_features(to_model_input(frames, config.preprocess))
            out.append((emb[0].numpy(), model.forward_head(emb)[0].numpy()))
    return out


@pytest.fixture(scope="module")
def first_run(ray_head, corpus, tiny_config, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out") / "features")
    config = tiny_config.replace(run={"address": ray_head["address"]})
    summary = run_extract(corpus["dir"], out, config, progress=False)
    return out, summary, config


def test_end_to_end_writes_every_good_video_once_and_fails_the_broken_one(first_run, corpus):
    out, summary, _ = first_run
    assert (summary.ok, summary.failed, summary.skipped) == (len(corpus["good"]), 1, 0)
    assert summary.failures[0]["video_id"] == "broken.mp4" and summary.failures[0]["stage"] == "decode"
    assert summary.failures[0]["error"].startswith("not_a_video: not a recognised video container")
    names = {os.path.relpath(p, out).split("/")[0] for p in glob.glob(f"{out}/*/*")}
    assert names == {"videos", "clips", "hdf5", "failures", "ledger", "runs"}
    assert not glob.glob(f"{out}/**/.tmp-*", recursive=True)
    ids = read_table(out, "videos", ["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == corpus["good"]
    report = verify(out)
    assert report["ok"], report["problems"]


def test_stages_are_separate_operators_and_actors_fall_back_to_cpu(first_run):
    _, summary, _ = first_run
    assert any("decode_videos" in op and "ClipEmbedder" not in op for op in summary.operators), summary.operators
    assert any("ClipEmbedder" in op and "decode_videos" not in op for op in summary.operators), summary.operators
    assert summary.devices and all("fallback: Ray GPU ids [" in d for d in summary.devices), summary.devices


def test_outputs_match_the_documented_schemas(first_run):
    out, _, _ = first_run
    videos = pq.read_table(glob.glob(f"{out}/videos/*.parquet")[0])
    assert videos.schema.remove_metadata() == schemas.video_schema(D, C).remove_metadata()
    clips = pq.read_table(glob.glob(f"{out}/clips/*.parquet")[0])
    assert clips.schema.remove_metadata() == schemas.clip_schema(D, C).remove_metadata()
    failures = pq.read_table(glob.glob(f"{out}/failures/*.parquet")[0])
    assert failures.schema.remove_metadata() == schemas.FAILURE_SCHEMA.remove_metadata()
    for path in glob.glob(f"{out}/hdf5/*.h5"):
        with h5py.File(path) as f:
            for name in schemas.HDF5_VIDEO_DATASETS + schemas.HDF5_CLIP_DATASETS:
                assert name in f, name
            n, m = len(f["video_id"]), len(f["clips/clip_index"])
            assert f["embedding"].shape == (n, D) and f["clips/embedding"].shape == (m, D)
            assert f["clip_offset"][-1] == m and f.attrs["schema_version"] == schemas.SCHEMA_VERSION


def test_features_equal_the_model_run_directly(first_run, corpus):
    """Per clip and per video, the pipeline's numbers are the reference computation's."""
    out, _, config = first_run
    clips = read_table(out, "clips").to_pylist()
    videos = {r["video_id"]: r for r in read_table(out, "videos").to_pylist()}
    for vid in corpus["good"]:
        ref = reference_clip_features(os.path.join(corpus["dir"], vid), config)
        got = sorted((c for c in clips if c["video_id"] == vid), key=lambda c: c["clip_index"])
        assert len(got) == len(ref) == videos[vid]["num_clips"]
        for row, (emb, logits) in zip(got, ref):
            np.testing.assert_allclose(row["embedding"], emb, atol=1e-5)
            np.testing.assert_allclose(row["logits"], logits, atol=1e-5)
        np.testing.assert_allclose(videos[vid]["embedding"], np.mean([e for e, _ in ref], 0), atol=1e-5)
        probs = torch.softmax(torch.tensor(np.stack([lg for _, lg in ref]), dtype=torch.float64), dim=-1)
        np.testing.assert_allclose(videos[vid]["probs"], probs.mean(0).numpy(), atol=1e-6)
        assert videos[vid]["preset"] == "tiny" and videos[vid]["checkpoint_sha256"] == "random:tiny:0"


def test_float32_frames_travel_through_ray_next_to_failure_rows(head_config, corpus, tmp_path):
    """`preprocess.frame_dtype: float32` (exact preprocessing): clips cross the stages as float32 beside
    the broken video's failure row, and the features are the direct computation's."""
    out = str(tmp_path / "features")
    config = head_config.replace(preprocess={"frame_dtype": "float32"})
    summary = run_extract(corpus["dir"], out, config, progress=False)
    assert (summary.ok, summary.failed) == (len(corpus["good"]), 1)
    clips = read_table(out, "clips").to_pylist()
    vid = corpus["good"][0]
    ref = reference_clip_features(os.path.join(corpus["dir"], vid), config)
    got = sorted((c for c in clips if c["video_id"] == vid), key=lambda c: c["clip_index"])
    assert len(got) == len(ref)
    for row, (emb, logits) in zip(got, ref):
        np.testing.assert_allclose(row["embedding"], emb, atol=1e-5)


def test_rerun_does_nothing_and_grown_manifest_does_only_new_videos(head_config, corpus, tmp_path):
    out = str(tmp_path / "features")
    config = head_config
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("video_id,uri\n" + "".join(f"{v},{corpus['dir']}/{v}\n" for v in corpus["good"][:2]))
    first = run_extract(str(manifest), out, config, progress=False)
    assert (first.ok, first.failed) == (2, 0)
    again = run_extract(str(manifest), out, config, progress=False)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 2)
    assert again.indexes == []                                      # no index: nothing to keep fresh
    build_index(out), build_index(out, "clips")
    manifest.write_text(manifest.read_text() + f"{corpus['good'][2]},{corpus['dir']}/{corpus['good'][2]}\n")
    grown = run_extract(str(manifest), out, config, progress=False)
    assert (grown.ok, grown.skipped) == (1, 2)
    assert [(r["kind"], r["action"], r["added"]) for r in grown.indexes] == [
        ("videos", "extended", 1), ("clips", "extended", grown.clips)]      # the run extended both indexes
    assert VideoIndex.from_output(out).how.startswith("approximate: the videos index covers all 3 ")
    ids = read_table(out, "videos", ["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == corpus["good"][:3]
    assert verify(out)["ok"]


def test_retry_failed_redoes_only_failed_videos(head_config, corpus, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    os.symlink(os.path.join(corpus["dir"], "a.mp4"), videos / "a.mp4")
    (videos / "late.mp4").write_bytes(b"not yet a video")
    out = str(tmp_path / "features")
    config = head_config
    first = run_extract(str(videos), out, config, progress=False)
    assert (first.ok, first.failed) == (1, 1)
    os.remove(videos / "late.mp4")
    os.symlink(os.path.join(corpus["dir"], "b.mp4"), videos / "late.mp4")
    assert run_extract(str(videos), out, config, progress=False).skipped == 2      # failed ones stay failed
    retried = run_extract(str(videos), out, config.replace(run={"retry_failed": True}), progress=False)
    assert (retried.ok, retried.failed, retried.skipped) == (1, 0, 1)
    status = run_cli("status", out, "--json")
    report = json.loads(status.stdout)
    assert (report["done"], report["failed"], report["pending"]) == (2, 0, 0)


def test_ray_job_submit_runs_the_job_entrypoint(ray_head, corpus, tmp_path):
    out = str(tmp_path / "features")
    # the head answers `ray status` before its job agent (which runs submitted jobs) is up
    assert wait_for(lambda: answers(ray_head["agent_port"]), timeout=120), "the head's job agent did not start"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = ["ray", "job", "submit", "--address", ray_head["dashboard"], "--working-dir", repo, "--",
           "python", "-m", "jobs.extract", corpus["dir"], "--out", out, "--config", "jobs/demo.yaml", "--no-progress"]
    done = subprocess.run(cmd, env=ray_env(), capture_output=True, text=True, timeout=400, cwd=repo)
    assert "failed: broken.mp4" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    ids = read_table(out, "videos", ["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == corpus["good"]
    assert verify(out)["ok"]


def test_embedded_ray_cli_run_exit_codes_and_status(corpus, tmp_path):
    """No --address: `vidfeat extract` starts (and stops) its own local Ray, CPU inference."""
    out = str(tmp_path / "features")
    done = run_cli("extract", corpus["dir"], "--out", out, "--preset", "tiny", "--checkpoint", "random",
                   "--no-progress", timeout=400)
    assert done.returncode == 1, done.stderr[-3000:]            # 1: finished, with a failed video
    assert "random model weights" in done.stdout and "inference on: cpu" in done.stdout
    assert f"{len(corpus['good'])} ok, 1 failed" in done.stdout
    status = json.loads(run_cli("status", out, "--json").stdout)
    assert (status["done"], status["failed"], status["pending"]) == (len(corpus["good"]), 1, 0)
    assert run_cli("verify", out).returncode == 0
    refused = run_cli("extract", corpus["dir"], "--out", out, "--preset", "tiny", "--checkpoint", "random",
                      "--seed", "1", "--no-progress")
    assert refused.returncode == 2 and "another configuration" in refused.stderr
    missing = run_cli("extract", corpus["dir"], "--out", str(tmp_path / "x"), "--preset", "tiny")
    assert missing.returncode == 2 and "no checkpoint given" in missing.stderr
