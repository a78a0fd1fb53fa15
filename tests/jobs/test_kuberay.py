"""The KubeRay RayJob example (jobs/kuberay_rayjob.yaml) parses, and its job command is an extraction
with arguments `vidfeat extract` accepts, on a cluster shaped for it (issue #21)."""
from __future__ import annotations

import argparse
import json
import os
import shlex

import yaml

from pipeline.cli.commands import add_extract_arguments, config_from_args
from pipeline.config import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rayjob() -> dict:
    with open(os.path.join(ROOT, "jobs", "kuberay_rayjob.yaml")) as fh:
        return yaml.safe_load(fh)


def test_the_rayjobs_entrypoint_parses_as_an_extraction_the_cli_accepts():
    """Parsed, not run: its command line is `python -m jobs.extract` with arguments `vidfeat extract`
    accepts and a config that loads (the extraction itself is tested by the pipeline and Slurm tests)."""
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.extract"]
    parser = argparse.ArgumentParser()
    add_extract_arguments(parser)
    args = parser.parse_args(argv[3:])
    assert args.source.startswith("s3://") and args.out.startswith("s3://")
    args.config = os.path.join(ROOT, args.config)                     # relative to the working dir
    config = config_from_args(args)
    assert config.model.preset == "timesformer-l-howto100m" and config.run.decode_resources == {"decode": 1}
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["env_vars"]["RAY_AUTH_MODE"] == "token"


def test_the_cluster_has_a_driver_head_cpu_decoders_and_gpu_workers_that_decode_too():
    spec = rayjob()["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"decode-cpu", "gpu-inference"}
    for group in groups.values():
        declared = json.loads(json.loads(group["rayStartParams"]["resources"]))   # KubeRay's quoting
        assert declared["decode"] > 0
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu = groups["gpu-inference"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpu) >= 1
    assert "nvidia.com/gpu" not in groups["decode-cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for pod in [head["template"], *(g["template"] for g in groups.values())]:
        assert pod["spec"]["terminationGracePeriodSeconds"] > RunConfig().drain_s      # room for the drain
