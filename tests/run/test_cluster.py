"""A real multi-node Ray cluster on 127.0.0.1 (`ray.cluster_utils.Cluster`): a head that runs nothing, a
CPU node that decodes and a node with a logical GPU that runs the inference actor, each with its own
raylet and object store. Nodes are hard-killed mid-run (`remove_node(allow_graceful=False)`) and replaced.
The videos come through a gate (gate.py) that holds back all but a few until the test has killed a node, so
each kill lands mid-run, and the videos let through after it are necessarily decoded (and, after the GPU
node's kill, inferred) on the replacement.

The inference actor's constructor arguments are Ray Data's `ray.put` of the stage (owned by the driver,
stored on the head node) and our small config dict: nothing a lost node can take with it, so Ray can
restart the actor on the replacement GPU node — which this test shows by finding clips inferred there.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pipeline.run.aggregate import aggregate_video
from pipeline.read.features import load_videos
from pipeline.store.ledger import Ledger
from pipeline.synthetic.samples import write_index_video
from pipeline.read.status import last_run
from pipeline.read.verify import verify

from conftest import ray_env
from gate import HELD_S, Gate, until
from test_pipeline import reference_clip_features

VIDEOS = 16
LET_THROUGH = 5         # videos the gate lets through before each kill: more than an inference batch (4 clips)
                        # can mix, so one completes although Ray Data's iterator holds back a result block


@pytest.fixture()
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                      "include_dashboard": False})
    try:
        yield c
    finally:
        c.shutdown()


def add_cpu_node(cluster):
    return cluster.add_node(num_cpus=2, resources={"decode": 2}, node_ip_address="127.0.0.1")


def add_gpu_node(cluster):
    return cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster_videos")
    for i in range(VIDEOS):
        write_index_video(str(root / f"v{i:02d}.mp4"), num_frames=120 + 12 * i, fps=30.0)
    return str(root)


def committed_parts(out: str) -> int:
    return len(Ledger(out).load().segments)


def start_driver(cluster, gate: Gate, out: str, tmp_path) -> subprocess.Popen:
    """`vidfeat extract` of the videos behind `gate`, joining the cluster, in its own process (Ray adds nodes
    from the main thread only)."""
    cfg, manifest = tmp_path / "cluster.yaml", tmp_path / "videos.csv"
    cfg.write_text(yaml.safe_dump({"run": {"commit_every": 1, "videos_per_task": 1, "compact": False,
                                           "decode_resources": {"decode": 1}}}))
    names = [f"v{i:02d}.mp4" for i in range(VIDEOS)]
    manifest.write_text("video_id,uri\n" + "".join(f"{n},{gate.uri(n)}\n" for n in names))
    return subprocess.Popen([sys.executable, "-m", "pipeline", "extract", str(manifest), "--out", out, "--preset",
                             "tiny", "--checkpoint", "random", "--address", cluster.address, "--config", str(cfg),
                             "--no-progress"], env={**ray_env(), "VIDFEAT_DOWNLOAD_STALL_S": HELD_S},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_and_replace(cluster, nodes: dict, out: str, driver, gate: Gate) -> list:
    """Once a part is committed and a decode task waits at the gate, kill the CPU node; once another part
    is committed, kill the GPU node; replace each. The gate lets LET_THROUGH videos through before each
    kill and the rest after the last. Returns, for each kill: (what, parts committed, videos let through)."""
    events = []
    until(lambda: committed_parts(out) >= 1 and gate.held.is_set(), driver)    # that task dies with the node
    cluster.remove_node(nodes["cpu"], allow_graceful=False)
    events.append(("cpu killed", committed_parts(out), len(gate.admitted)))
    nodes["cpu2"] = add_cpu_node(cluster)
    seen = committed_parts(out)
    gate.admit(LET_THROUGH)                                  # decoded on the new CPU node: the old one is gone
    until(lambda: committed_parts(out) > seen, driver)
    cluster.remove_node(nodes["gpu"], allow_graceful=False)
    events.append(("gpu killed", committed_parts(out), len(gate.admitted)))
    nodes["gpu2"] = add_gpu_node(cluster)
    gate.open()                                              # decoded and inferred on the new nodes
    return events


def test_decode_on_cpu_nodes_inference_on_gpu_node_and_both_survive_a_hard_kill(cluster, videos, tiny_config,
                                                                               tmp_path):
    nodes = {"cpu": add_cpu_node(cluster), "gpu": add_gpu_node(cluster)}
    out = str(tmp_path / "features")
    with Gate(videos, admit=LET_THROUGH) as gate:
        driver = start_driver(cluster, gate, out, tmp_path)
        try:
            events = kill_and_replace(cluster, nodes, out, driver, gate)
            log, _ = driver.communicate(timeout=600)
        finally:
            driver.kill()
    assert driver.returncode == 0, log[-3000:]
    assert [e[0] for e in events] == ["cpu killed", "gpu killed"], events
    assert all(parts < VIDEOS and through < VIDEOS for _, parts, through in events), f"a kill after the run: {events}"
    summary = last_run(Ledger(out))["summary"]
    cpu_nodes = {nodes["cpu"].node_id, nodes["cpu2"].node_id}
    gpu_nodes = {nodes["gpu"].node_id, nodes["gpu2"].node_id}
    assert set(summary["decode_nodes"]) <= cpu_nodes and nodes["cpu2"].node_id in summary["decode_nodes"], summary
    assert set(summary["infer_nodes"]) <= gpu_nodes, summary
    assert nodes["gpu2"].node_id in summary["infer_nodes"], "the actor was not restarted on the new GPU node"
    assert (summary["ok"], summary["failed"]) == (VIDEOS, 0), summary["failures"]
    report = verify(out)
    assert report["ok"] and report["videos"] == VIDEOS, report["problems"]
    assert_features_equal_reference(out, videos, tiny_config)


def assert_features_equal_reference(out: str, videos: str, config) -> None:
    got = load_videos(out)
    assert sorted(got.ids) == [f"v{i:02d}.mp4" for i in range(VIDEOS)]
    for vid, emb in zip(got.ids, got.embedding):
        clips = [{"clip_index": k, "embedding": e, "logits": lg, "end_s": 0.0}
                 for k, (e, lg) in enumerate(reference_clip_features(os.path.join(videos, vid), config))]
        np.testing.assert_allclose(emb, aggregate_video(clips)["embedding"], atol=1e-5, err_msg=vid)
