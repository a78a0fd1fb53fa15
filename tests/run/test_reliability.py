"""Faults, bad inputs and object storage: nothing lost, nothing twice, nothing half-written visible.

Bad inputs are generated here; faults are real process deaths (SIGKILL through `pipeline.faults`
failpoints); object storage is moto's S3 server on 127.0.0.1.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from pipeline.synthetic import samples
from pipeline.config import Config
from pipeline.read.parts import read_table
from pipeline.store.ledger import Ledger
from pipeline.store.commit import write_part
from pipeline.run.runner import run_extract
from pipeline.read.verify import verify

from conftest import free_port, ray_env, run_cli
from partkit import PROV

# name → expected outcome: "ok" (features) or the DecodeError kind that must open the failure's error
CATALOGUE = {
    "good.mp4": "ok", "one_frame.mp4": "ok", "very_short.mp4": "ok", "vfr.mp4": "ok", "portrait_rotated.mp4": "ok",
    "huge_duration_claim.mp4": "ok", "corrupt_middle.mp4": "ok", "truncated_mid_stream.mkv": "ok",
    "missing.mp4": "not_found", "a_directory.mp4": "not_a_video", "zero_bytes.mp4": "not_a_video",
    "random_bytes.mp4": "not_a_video", "truncated_no_moov.mp4": "corrupt", "audio_only.mp4": "not_a_video",
    "image_renamed.mp4": "not_a_video", "unsupported_codec.mp4": "unsupported_codec", "hangs.mp4": "timeout",
    "unreachable_url": "io",
}


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """Every entry of CATALOGUE made for real, listed in a manifest (so missing files and URLs fit)."""
    root = tmp_path_factory.mktemp("bad")
    p = lambda name: str(root / name)                                     # noqa: E731
    src = samples.write_index_video(p("good.mp4"), 90, 30.0)
    samples.write_index_video(p("one_frame.mp4"), 1, 30.0)
    samples.write_index_video(p("very_short.mp4"), 5, 30.0)
    samples.write_index_video(p("vfr.mp4"), 60, 30.0, timestamps=list(np.cumsum([0.0] + [1 / 30 if i % 3 else 1 / 12 for i in range(1, 60)])))
    samples.write_index_video(p("portrait_rotated.mp4"), 40, 25.0, width=64, height=48, rotation=90)
    samples.write_huge_duration_claim(src, p("huge_duration_claim.mp4"))
    samples.write_corrupt_middle(src, p("corrupt_middle.mp4"))
    samples.write_truncated(samples.write_index_video(p("src.mkv"), 90, 30.0), p("truncated_mid_stream.mkv"))
    os.makedirs(p("a_directory.mp4"))
    samples.write_empty(p("zero_bytes.mp4"))
    samples.write_random_bytes(p("random_bytes.mp4"))
    samples.write_truncated(src, p("truncated_no_moov.mp4"), keep=0.5)
    samples.write_audio_only(p("audio_only.mp4"))
    samples.write_image(p("image_renamed.mp4"))
    samples.write_unsupported_codec(src, p("unsupported_codec.mp4"))
    os.mkfifo(p("hangs.mp4"))                                              # open() blocks forever
    uris = {name: p(name) for name in CATALOGUE}
    uris["unreachable_url"] = f"http://127.0.0.1:{free_port()}/video.mp4"  # nothing listens there
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"video_id": k, "uri": v}) + "\n" for k, v in uris.items()))
    return str(manifest)


def test_bad_input_catalogue_ends_in_features_or_precise_failures(head_config, bad_corpus, tmp_path):
    out = str(tmp_path / "features")
    config = head_config.replace(decode={"timeout_s": 8.0})
    summary = run_extract(bad_corpus, out, config, progress=False)
    done = set(read_table(out, "videos", ["video_id"]).column("video_id").to_pylist())
    failures = {f["video_id"]: f for f in read_table(out, "failures").to_pylist()}
    for name, expected in CATALOGUE.items():
        if expected == "ok":
            assert name in done, (name, failures.get(name))
        else:
            assert name in failures, (name, "unexpectedly produced features")
            assert failures[name]["error"].startswith(f"{expected}:"), (name, failures[name]["error"])
            assert failures[name]["stage"] == "decode"
    assert summary.ok + summary.failed == len(CATALOGUE)
    clips = read_table(out, "clips").to_pylist()
    one = [c for c in clips if c["video_id"] == "one_frame.mp4"]
    assert len(one) == 1 and one[0]["valid_frames"] == 1 and set(one[0]["frame_indices"]) == {0}
    assert verify(out)["ok"]


def reference_features(out: str) -> dict[str, np.ndarray]:
    rows = read_table(out, "videos", ["video_id", "embedding"]).to_pylist()
    return {r["video_id"]: np.asarray(r["embedding"]) for r in rows}


def test_driver_killed_at_every_stage_then_rerun_gives_every_video_once(ray_head, head_config, corpus, tmp_path):
    """SIGKILL during decode/inference, then between a part's data and its ledger record; then a clean
    rerun. Every video exactly once, features equal to an uninterrupted run."""
    clean = str(tmp_path / "clean")
    config = head_config.replace(run={"commit_every": 1})
    run_extract(corpus["dir"], clean, config, progress=False)
    out = str(tmp_path / "killed")
    args = ["extract", corpus["dir"], "--out", out, "--preset", "tiny", "--checkpoint", "random",
            "--address", ray_head["address"], "--num-actors", "1", "--no-progress"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run: {commit_every: 1}\n")
    for point in ("driver.result@2", "commit.data@1"):
        killed = run_cli(*args, "--config", str(cfg), env_extra={"VIDFEAT_FAILPOINTS": point})
        assert killed.returncode == 128 + 9, (point, killed.stderr[-2000:])   # the driver died: the supervisor says so
        assert "killed (SIGKILL" in killed.stderr
    assert glob.glob(f"{out}/videos/*.parquet")                       # something was committed or orphaned
    failed_before = "broken.mp4" in Ledger(out).load().failed       # a killed run may have committed it
    final = run_cli(*args, "--config", str(cfg))
    assert final.returncode == (0 if failed_before else 1), final.stderr[-2000:]   # 1: it failed in this run
    assert Ledger(out).load().failed.keys() == {"broken.mp4"}
    report = verify(out)
    assert report["ok"], report["problems"]
    want, got = reference_features(clean), reference_features(out)
    assert sorted(got) == sorted(want) == corpus["good"]
    for vid in want:
        np.testing.assert_allclose(got[vid], want[vid], atol=1e-6)


def test_inference_actor_death_is_retried(ray_head, corpus, tiny_config, tmp_path):
    """The first batch kills its actor (a real process death); Ray restarts it and retries the batch."""
    marker = tmp_path / "died"
    out = str(tmp_path / "features")
    done = run_cli("extract", corpus["dir"], "--out", out, "--preset", "tiny", "--checkpoint", "random",
                   "--address", ray_head["address"], "--num-actors", "1", "--no-progress",
                   env_extra={"VIDFEAT_FAILPOINTS": "actor.batch", "VIDFEAT_FAILPOINT_ONCE": str(marker)})
    assert marker.exists(), "the actor never died: the failpoint did not reach it"
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"{len(corpus['good'])} ok, 1 failed" in done.stdout
    assert verify(out)["ok"]


# --- verify catches damage ------------------------------------------------------------------------------

def committed_output(root, n=3) -> tuple[str, Ledger]:
    out = str(root / "out")
    ledger = Ledger(out)
    rng = np.random.default_rng(0)
    videos, clips = [], {}
    for i in range(n):
        vid = f"v{i}"
        emb, logits = rng.normal(size=8).astype(np.float32), rng.normal(size=3).astype(np.float32)
        clips[vid] = [{"video_id": vid, "clip_index": 0, "start_s": 0.0, "end_s": 1.0, "valid_frames": 4,
                       "frame_indices": [0, 1, 2, 3], "embedding": emb, "logits": logits}]
        videos.append({"video_id": vid, "uri": f"/{vid}", "num_clips": 1, "duration_s": 1.0, "embedding": emb,
                       "logits": logits, "probs": np.full(3, 1 / 3, np.float32), **PROV})
    write_part(ledger, "part-r-00000", videos, clips, [], PROV)
    ledger.record("part-r-00000", [v["video_id"] for v in videos], [])
    return out, ledger


def test_verify_passes_a_sound_output_and_catches_each_kind_of_damage(tmp_path):
    out, ledger = committed_output(tmp_path)
    assert verify(out)["ok"] and run_cli("verify", out).returncode == 0

    with h5py.File(f"{out}/hdf5/part-r-00000.h5", "r+") as f:
        original = f["embedding"][1, 0]
        f["embedding"][1, 0] = original + 1.0
    assert any("Parquet and HDF5 numbers differ" in p for p in verify(out)["problems"])
    with h5py.File(f"{out}/hdf5/part-r-00000.h5", "r+") as f:
        f["embedding"][1, 0] = original
    assert verify(out)["ok"]

    shutil.copy(f"{out}/videos/part-r-00000.parquet", f"{out}/videos/part-r-00001.parquet")
    shutil.copy(f"{out}/clips/part-r-00000.parquet", f"{out}/clips/part-r-00001.parquet")
    shutil.copy(f"{out}/hdf5/part-r-00000.h5", f"{out}/hdf5/part-r-00001.h5")
    ledger.record("part-r-00001", ["v0"], [])
    problems = verify(out)["problems"]
    assert any("v0 appears 2 times in videos/" in p for p in problems)
    result = run_cli("verify", out)
    assert result.returncode == 1 and "appears 2 times" in result.stdout

    out2, _ = committed_output(tmp_path / "b")
    with open(f"{out2}/videos/part-r-00000.parquet", "r+b") as fh:
        fh.truncate(100)
    assert any("unreadable" in p for p in verify(out2)["problems"])

    out3, ledger3 = committed_output(tmp_path / "c")
    ledger3.record("part-r-00009", ["ghost"], [])
    assert any("ghost is done in the ledger but missing from videos/" in p for p in verify(out3)["problems"])


def test_verify_catches_non_finite_values(tmp_path):
    out, ledger = committed_output(tmp_path)
    videos = read_table(out, "videos").to_pylist()
    for v in videos:
        v["embedding"] = np.array(v["embedding"], np.float32)
        v["logits"], v["probs"] = np.array(v["logits"], np.float32), np.array(v["probs"], np.float32)
    videos[2]["embedding"][3] = np.nan
    clips = {v["video_id"]: [{**c, "embedding": np.array(c["embedding"], np.float32)}
                             for c in read_table(out, "clips").to_pylist() if c["video_id"] == v["video_id"]]
             for v in videos}
    shutil.rmtree(out)
    write_part(ledger, "part-r-00000", videos, clips, [], PROV)
    ledger.record("part-r-00000", [v["video_id"] for v in videos], [])
    assert any("non-finite" in p and "v2" in p for p in verify(out)["problems"])


# --- object storage: moto's S3 server on 127.0.0.1 -------------------------------------------------------

def test_s3_in_and_out_with_resume_and_a_crash_between_data_and_ledger(s3, ray_head, corpus, tmp_path):
    fs, bucket = s3["fs"], s3["bucket"]
    for name in corpus["good"][:2] + corpus["bad"]:
        fs.put_file(os.path.join(corpus["dir"], name), f"{bucket}/videos/{name}")
    source, out = f"s3://{bucket}/videos", f"s3://{bucket}/features"
    args = ["extract", source, "--out", out, "--preset", "tiny", "--checkpoint", "random", "--no-progress",
            "--address", ray_head["address"], "--num-actors", "1"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run: {commit_every: 1}\n")
    killed = run_cli(*args, "--config", str(cfg), env_extra={**s3["env"], "VIDFEAT_FAILPOINTS": "commit.data@1"},
                     timeout=400)
    assert killed.returncode == 128 + 9, killed.stderr[-3000:]        # the driver died: the supervisor says so
    fs.invalidate_cache()
    assert fs.ls(f"{bucket}/features/videos") and not fs.glob(f"{bucket}/features/ledger/part-*.json")
    assert not fs.exists(f"{bucket}/features/run.json")          # pinned by the first commit, not before
    done = run_cli(*args, "--config", str(cfg), env_extra=s3["env"], timeout=400)
    assert done.returncode == 1 and "2 ok, 1 failed" in done.stdout, done.stdout + done.stderr[-3000:]
    assert verify(out)["ok"]
    again = run_extract(source, out, Config.from_preset("tiny", checkpoint="random"), progress=False)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 3)
    ids = read_table(out, "videos", ["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == sorted(corpus["good"][:2])
    assert not [p for p in fs.find(f"{bucket}/features") if "/.tmp-" in p]


def test_upload_killed_mid_part_leaves_nothing_visible(s3, tmp_path):
    """A multipart upload (file larger than two s3fs chunks) killed after its first part: no object."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(110 * 2**20)                                   # sparse: cheap to make
    url = f"s3://{s3['bucket']}/features/videos/part-x-00000.parquet"
    code = ("import sys; from pipeline.store.publish import publish_file; publish_file(sys.argv[1], sys.argv[2])")
    env = {**ray_env(), **s3["env"], "VIDFEAT_FAILPOINTS": "publish.upload"}
    died = subprocess.run([sys.executable, "-c", code, str(big), url], env=env, capture_output=True, timeout=300)
    assert died.returncode == -9, died.stderr[-2000:]
    s3["fs"].invalidate_cache()
    assert not s3["fs"].exists(url.removeprefix("s3://"))
