"""A real multi-node Ray cluster on 127.0.0.1 (`ray.cluster_utils.Cluster`): a head that runs nothing, a
CPU node that decodes and a node with a logical GPU that runs the inference actor, each with its own
raylet and object store. Nodes are hard-killed mid-run (`remove_node(allow_graceful=False)`) and replaced.

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
from pipeline.plan.samples import write_index_video
from pipeline.read.status import last_run
from pipeline.read.verify import verify

from conftest import ray_env, wait_for
from test_pipeline import reference_clip_features

VIDEOS = 20


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


def start_driver(cluster, videos: str, out: str, tmp_path) -> subprocess.Popen:
    """`vidfeat extract` joining the cluster, in its own process (Ray adds nodes from the main thread only)."""
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"commit_every": 1, "videos_per_task": 1, "compact": False,
                                           "decode_resources": {"decode": 1}}}))
    return subprocess.Popen([sys.executable, "-m", "pipeline", "extract", videos, "--out", out, "--preset", "tiny",
                             "--checkpoint", "random", "--address", cluster.address, "--config", str(cfg),
                             "--no-progress"], env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def kill_and_replace(cluster, nodes: dict, out: str, driver) -> list:
    """Once a part is committed, kill the CPU node; once another is, kill the GPU node; replace each."""
    events = []
    running = lambda: driver.poll() is None                                  # noqa: E731
    if wait_for(lambda: committed_parts(out) >= 1 or not running(), timeout=300) and running():
        cluster.remove_node(nodes["cpu"], allow_graceful=False)
        events.append(("cpu killed", committed_parts(out)))
        nodes["cpu2"] = add_cpu_node(cluster)
    seen = committed_parts(out)
    if wait_for(lambda: committed_parts(out) > seen or not running(), timeout=300) and running():
        cluster.remove_node(nodes["gpu"], allow_graceful=False)
        events.append(("gpu killed", committed_parts(out)))
        nodes["gpu2"] = add_gpu_node(cluster)
    return events


def test_decode_on_cpu_nodes_inference_on_gpu_node_and_both_survive_a_hard_kill(cluster, videos, tiny_config,
                                                                               tmp_path):
    nodes = {"cpu": add_cpu_node(cluster), "gpu": add_gpu_node(cluster)}
    out = str(tmp_path / "features")
    driver = start_driver(cluster, videos, out, tmp_path)
    try:
        events = kill_and_replace(cluster, nodes, out, driver)
        log, _ = driver.communicate(timeout=600)
    finally:
        driver.kill()
    assert driver.returncode == 0, log[-3000:]
    assert [e[0] for e in events] == ["cpu killed", "gpu killed"], events
    assert all(parts < VIDEOS for _, parts in events), f"the kills came after the run: {events}"
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
