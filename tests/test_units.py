"""Pure parts of the pipeline: corpus, config, aggregation, collector, ledger, sinks, cluster.yaml."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.run.aggregate import aggregate_video
from pipeline.config import Config
from pipeline.corpus import read_corpus
from pipeline.errors import ConfigError
from pipeline.store.ledger import Ledger
from pipeline.run.collector import INCOMPLETE, VideoCollector
from pipeline.store.commit import write_part
from pipeline.run.feed import inference_resources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return path


# --- corpus -------------------------------------------------------------------------------------------

def test_directory_ids_are_paths_relative_to_the_root(tmp_path):
    for name in ("a.mp4", "x/b.MKV", "x/y/c.webm", "notes.txt", ".hidden/d.mp4"):
        touch(tmp_path / name)
    records = read_corpus(str(tmp_path))
    assert [r.video_id for r in records] == ["a.mp4", "x/b.MKV", "x/y/c.webm"]
    assert records[1].uri == str(tmp_path / "x/b.MKV")


def test_glob_source(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mkv"):
        touch(tmp_path / "v" / name)
    assert [r.video_id for r in read_corpus(str(tmp_path / "v" / "*.mp4"))] == ["a.mp4", "b.mp4"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifests_with_and_without_ids(tmp_path, fmt):
    rows = [{"video_id": "first", "uri": "clips/1.mp4"}, {"video_id": None, "uri": "/abs/2.mp4"},
            {"video_id": "third", "uri": "s3://bucket/3.mp4"}]
    path = tmp_path / f"manifest.{fmt}"
    if fmt == "csv":
        path.write_text("video_id,uri\n" + "".join(f"{r['video_id'] or ''},{r['uri']}\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    records = read_corpus(str(path))
    assert [r.video_id for r in records] == ["first", "/abs/2.mp4", "third"]
    assert records[0].uri == f"{tmp_path}/clips/1.mp4" and records[2].uri == "s3://bucket/3.mp4"


def test_duplicate_ids_are_named(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("video_id,uri\nsame,a.mp4\nsame,b.mp4\nother,c.mp4\n")
    with pytest.raises(ConfigError, match="duplicate video ids.*'same'"):
        read_corpus(str(path))


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="neither a manifest"):
        read_corpus(str(tmp_path / "missing"))
    (tmp_path / "m.csv").write_text("path\nx.mp4\n")
    with pytest.raises(ConfigError, match="no 'uri' column"):
        read_corpus(str(tmp_path / "m.csv"))


# --- config -------------------------------------------------------------------------------------------

def test_defaults_are_the_papers_protocol():
    c = Config()
    assert (c.sampling.num_frames, c.sampling.stride, c.sampling.target_fps) == (96, 32, 30.0)
    assert abs(c.sampling.clip_s - 102.4) < 1e-9 and abs(c.sampling.interval_s - 32 / 30) < 1e-12
    assert (c.preprocess.size, c.preprocess.crops, c.preprocess.mean, c.preprocess.std) == (
        224, 1, (0.45,) * 3, (0.225,) * 3)


def test_yaml_roundtrip_and_preset_defaults():
    c = Config.from_preset("tiny", checkpoint="random").replace(run={"batch_size": 3})
    again = Config.from_dict(yaml.safe_load(c.to_yaml()))
    assert again == c
    assert Config.from_dict({"model": {"preset": "timesformer-k400"}}).sampling.num_frames == 8
    with pytest.raises(ValueError, match="unknown keys in config section 'run'"):
        Config.from_dict({"run": {"batch": 1}})


def test_fingerprint_tracks_only_what_changes_features():
    base = Config.from_preset("tiny", checkpoint="random")
    assert base.fingerprint() == base.replace(run={"batch_size": 9, "commit_every": 1}).fingerprint()
    assert base.fingerprint() != base.replace(sampling={"stride": 4}).fingerprint()
    assert base.fingerprint() != base.replace(preprocess={"crops": 3}).fingerprint()
    assert base.fingerprint("a" * 64) != base.fingerprint("b" * 64)


@pytest.mark.parametrize("name", ["howto100m_l.yaml", "demo.yaml"])
def test_job_configs_load(name):
    c = Config.from_yaml(os.path.join(REPO, "jobs", name))
    assert c.model.checkpoint


# --- aggregation and the collector -------------------------------------------------------------------

def clip(i, emb, logits, end=1.0):
    return {"clip_index": i, "embedding": np.asarray(emb, np.float32), "logits": np.asarray(logits, np.float32),
            "end_s": end, "start_s": 0.0, "valid_frames": 4, "frame_indices": [0]}


def test_aggregate_means_and_probs():
    video = aggregate_video([clip(1, [3, 0], [0, 2], end=9.5), clip(0, [1, 2], [1, 1])])
    np.testing.assert_allclose(video["embedding"], [2, 1])
    np.testing.assert_allclose(video["logits"], [0.5, 1.5])
    e2 = math.exp(2)                                  # softmax([1, 1]) = [.5, .5]; softmax([0, 2]) = [1, e²] / (1 + e²)
    want = (np.array([0.5, 0.5]) + np.array([1, e2]) / (1 + e2)) / 2
    np.testing.assert_allclose(video["probs"], want, rtol=1e-6)
    assert video["num_clips"] == 2 and video["duration_s"] == 9.5
    with pytest.raises(ValueError, match="clip indices"):
        aggregate_video([clip(0, [1], [1]), clip(2, [1], [1])])


def row(vid, i, last=False, error="", stage=""):
    return {"row": "abc".index(vid), "video_id": vid, "uri": f"/{vid}", "clip_index": i, "last": last, "start_s": 0.0, "end_s": 1.0,
            "valid_frames": 4, "frame_indices": np.zeros(4), "embedding": np.ones(2) * i, "logits": np.zeros(3),
            "error": error, "stage": stage}


def test_collector_assembles_out_of_order_clips_and_drops_failed_videos():
    col = VideoCollector(pa.table({"video_id": ["a", "b", "c"], "uri": ["/a", "/b", "/c"]}))
    assert col.add(row("a", 2, last=True)) == [] and col.add(row("a", 0)) == []
    assert col.add(row("b", 0)) == []
    failed = col.add(row("b", -1, last=True, error="corrupt: cut", stage="decode"))
    assert failed == [{"failure": {"video_id": "b", "uri": "/b", "stage": "decode", "error": "corrupt: cut"}}]
    assert col.add(row("b", 1, last=True)) == []                   # late clips of a failed video: dropped
    (done,) = col.add(row("a", 1))
    assert done["video"]["num_clips"] == 3 and [c["clip_index"] for c in done["clips"]] == [0, 1, 2]
    assert col.unfinished() == [
        {"failure": {"video_id": "c", "uri": "/c", "stage": "decode", "error": INCOMPLETE}}]


def test_inference_resources_leave_a_cpu_for_decoding():
    assert inference_resources(2, 2.0, 2) == {"num_gpus": 1, "num_cpus": 0.5}
    assert inference_resources(8, 96.0, 8) == {"num_gpus": 1, "num_cpus": 1.0}
    assert inference_resources(0, 2.0, 1) == {"num_cpus": 1.0}
    assert inference_resources(0, 16.0, 1) == {"num_cpus": 8.0}


# --- ledger and sinks ---------------------------------------------------------------------------------

def video_event(vid):
    emb, logits = np.arange(4, dtype=np.float32), np.zeros(3, np.float32)
    return ({"video_id": vid, "uri": f"/{vid}", "num_clips": 1, "duration_s": 1.0, "embedding": emb,
             "logits": logits, "probs": logits + 1 / 3},
            [{**clip(0, emb, logits), "video_id": vid}])


PROV = {"checkpoint_sha256": "x", "preset": "tiny", "sampling": "4x8@30fps", "preprocessing": "p", "decode": "d",
        "fingerprint": "f", "schema_version": 1, "code_version": "0", "run_id": "r"}


def test_ledger_commit_protocol_and_garbage_collection(tmp_path):
    out = str(tmp_path / "out")
    ledger = Ledger(out)
    video, clips = video_event("v1")
    write_part(ledger, "part-r-00000", [{**video, **PROV}], {"v1": clips}, [], PROV)
    assert ledger.load().done == set()                   # files alone are not a commit
    ledger.record("part-r-00000", ["v1"], [])
    write_part(ledger, "part-r-00001", [{**video_event("v2")[0], **PROV}], {"v2": video_event("v2")[1]}, [], PROV)
    touch(f"{out}/videos/.tmp-part-r-00002.parquet-1234")
    state = ledger.load()
    assert state.done == {"v1"} and state.pending(["v1", "v2"]) == ["v2"]
    removed = ledger.collect_garbage(state)
    assert sorted(os.path.basename(p) for p in removed) == [
        ".tmp-part-r-00002.parquet-1234", "part-r-00001.h5", "part-r-00001.parquet", "part-r-00001.parquet"]
    assert sorted(os.listdir(f"{out}/videos")) == ["part-r-00000.parquet"]


def test_later_success_overrides_earlier_failure(tmp_path):
    ledger = Ledger(str(tmp_path))
    ledger.record("part-a-00000", [], [{"video_id": "v", "uri": "/v", "stage": "decode", "error": "x"}])
    assert ledger.load().failed.keys() == {"v"}
    assert ledger.load().pending(["v"]) == [] and ledger.load().pending(["v"], retry_failed=True) == ["v"]
    ledger.record("part-b-00000", ["v"], [])
    state = ledger.load()
    assert state.done == {"v"} and not state.failed


def test_fingerprint_is_pinned_by_the_first_commit_and_checked_after(tmp_path):
    ledger = Ledger(str(tmp_path))
    ledger.check_fingerprint("bbb")                   # nothing pinned yet: any fingerprint may start
    ledger.pin("aaa", {"model": 1})
    ledger.pin("aaa", {"model": 1})
    ledger.check_fingerprint("aaa")
    with pytest.raises(ConfigError, match="another configuration"):
        ledger.check_fingerprint("bbb")
    with pytest.raises(ConfigError, match="another configuration"):
        ledger.pin("bbb", {"model": 2})


def test_video_ids_never_become_paths(tmp_path):
    """Hostile ids are data, not file names: parts are named by run and sequence only."""
    ledger = Ledger(str(tmp_path / "out"))
    video, clips = video_event("../../escape")
    write_part(ledger, "part-r-00000", [{**video, **PROV}], {"../../escape": clips}, [], PROV)
    ledger.record("part-r-00000", ["../../escape"], [])
    written = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
    assert all(p.startswith("out/") for p in written) and not os.path.exists(tmp_path / "escape")


# --- cluster.yaml -------------------------------------------------------------------------------------

def test_cluster_yaml_is_valid_for_rays_launcher_and_opens_nothing_to_the_world():
    import jsonschema                      # in the dev extra: missing, it fails rather than skips
    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as fh:
        schema = json.load(fh)
    with open(os.path.join(REPO, "cluster.yaml")) as fh:
        text = fh.read()
    config = yaml.safe_load(text)
    jsonschema.validate(config, schema)
    values = json.dumps(config)                          # the settings, not the comments
    assert "0.0.0.0/0" not in values and "::/0" not in values
    assert config["provider"]["use_internal_ips"] is True
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert any("pip install" in c for c in config["setup_commands"])


def test_cluster_yaml_declares_what_the_howto100m_job_asks_for():
    """Decode tasks ask for run.decode_resources: the worker node types must declare those resources, the
    head none (it runs the driver only), and a GPU node keeps one CPU per GPU for its inference actor."""
    with open(os.path.join(REPO, "cluster.yaml")) as fh:
        nodes = yaml.safe_load(fh)["available_node_types"]
    job = Config.from_yaml(os.path.join(REPO, "jobs", "howto100m_l.yaml"))
    wanted = set(job.run.decode_resources)
    assert wanted and all(wanted <= set(nodes[n]["resources"]) for n in ("decode_cpu", "gpu_h100"))
    assert nodes["head"]["resources"] == {"CPU": 0}
    gpu = nodes["gpu_h100"]
    assert gpu["node_config"]["InstanceType"] == "p5.48xlarge"
    assert gpu["resources"]["decode"] + 8 <= 192                       # 8 GPUs, one actor CPU each


def test_published_files_are_readable_as_a_plain_open_would_make_them(tmp_path):
    """tempfile makes 0600 files; a teammate who can read the data must be able to read the ledger too."""
    from pipeline.store.publish import file_mode, publish_bytes, publish_file

    mask = os.umask(0o022)
    os.umask(mask)
    FILE_MODE = file_mode()
    assert FILE_MODE == 0o666 & ~mask and FILE_MODE & 0o600 == 0o600
    publish_bytes(b"{}", str(tmp_path / "out" / "run.json"))
    local = tmp_path / "made.bin"
    local.write_bytes(b"x")
    os.chmod(local, 0o600)
    publish_file(str(local), str(tmp_path / "out" / "part.bin"))
    ledger = Ledger(str(tmp_path / "out"))
    ledger.record("part-a", ["v1"], [])
    ledger.fold()
    published = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "out") for f in files
                 if not f.startswith(".")]
    assert len(published) >= 4                        # run.json, part.bin, the record, the index
    assert {oct(os.stat(p).st_mode & 0o777) for p in published} == {oct(FILE_MODE)}
