"""Shared fixtures: generated corpora, and a real local Ray head on 127.0.0.1 with two logical GPUs.

The head is started with `ray start --head` (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps it on loopback,
single node) and stopped at the end of the session; tests join it with `--address`. The logical GPUs
make the pipeline give each inference actor one GPU id; with no CUDA device the actors fall back to
the CPU.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time

import pytest

from pipeline.config import Config
from pipeline.plan.samples import write_index_video, write_random_bytes

# Token authentication (Ray's default) with a token made for this test session: `ray start`, drivers
# and `ray job submit` all read RAY_AUTH_TOKEN, so a fresh machine needs no ~/.ray/auth_token.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32)}
os.environ.update(LOOPBACK_ENV)        # before anything imports ray: it reads these at import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict:
    env = {**os.environ, **LOOPBACK_ENV}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A `ray start --head` cluster on 127.0.0.1: {"address", "dashboard"}; stopped after the session."""
    if shutil.which("ray") is None:
        pytest.fail("the `ray` command is missing: install the package with its dependencies")
    temp = tmp_path_factory.mktemp("ray")
    port, dash = free_port(), free_port()
    cmd = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--num-gpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--temp-dir={temp}", "--disable-usage-stats"]
    subprocess.run(cmd, check=True, env=ray_env(), capture_output=True, timeout=180)
    try:
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}"}
    finally:
        subprocess.run(["ray", "stop", "--force"], env=ray_env(), capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Four small index videos (30, 25, 29.97 fps, portrait) and one broken file; {"dir", "good", "bad"}."""
    root = tmp_path_factory.mktemp("corpus")
    good = {
        "a.mp4": dict(num_frames=75, fps=30.0),
        "b.mp4": dict(num_frames=40, fps=25.0),
        "sub/c.mp4": dict(num_frames=100, fps=30000 / 1001),
        "d.mp4": dict(num_frames=20, fps=30.0, width=48, height=64),
    }
    for name, kw in good.items():
        os.makedirs(root / os.path.dirname(name), exist_ok=True)
        write_index_video(str(root / name), **kw)
    write_random_bytes(str(root / "broken.mp4"))
    return {"dir": str(root), "good": sorted(good), "bad": ["broken.mp4"]}


@pytest.fixture(scope="session")
def tiny_config():
    return Config.from_preset("tiny", checkpoint="random").replace(run={"commit_every": 2})


def run_cli(*args: str, timeout: float = 300, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in a subprocess with a loopback-only Ray environment (plus `env_extra`)."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env={**ray_env(), **(env_extra or {})},
                          capture_output=True, text=True, timeout=timeout, **kw)


def wait_for(predicate, timeout: float = 240, interval: float = 0.2) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass (a bound on waiting, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
