"""Shared fixtures: generated corpora, and a real local Ray head on 127.0.0.1 with two logical GPUs.

The head is started with `ray start --head` (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps it on loopback,
single node) and stopped at the end of the session; tests join it with `--address`. The logical GPUs
make the pipeline give each inference actor one GPU id; with no CUDA device the actors fall back to
the CPU.
"""
from __future__ import annotations

import contextlib
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
# The scripts of the environment that runs the tests (`ray`, `vidfeat`) first on PATH: an environment's
# python run without activating it starts that environment's Ray, not another installation's (or none).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


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
    """A `ray start --head` cluster on 127.0.0.1: {"address", "dashboard"}; stopped after the session.

    It runs with `--block` in a session of its own, so that what this test session started is exactly
    that process and its descendants, and only they are stopped (`stop_tree`): never `ray stop`, which
    stops every Ray on the machine, a user's own cluster and another test run included."""
    if shutil.which("ray") is None:
        pytest.fail("the `ray` command is missing: install the package with its dependencies")
    temp = tmp_path_factory.mktemp("ray")
    port, dash = free_port(), free_port()
    cmd = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--num-gpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--temp-dir={temp}", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=ray_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        assert wait_for(lambda: head.poll() is not None or _head_up(address), timeout=180), "ray head did not start"
        assert head.poll() is None, f"`ray start --head` exited with {head.returncode}"
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dash}"}
    finally:
        stop_tree(head)


def _head_up(address: str) -> bool:
    """Whether the head's GCS answers and its node is registered (`ray status` succeeds)."""
    return subprocess.run(["ray", "status", f"--address={address}"], env=ray_env(), capture_output=True,
                          timeout=60).returncode == 0


def stop_tree(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM `proc` and every process descending from it now, then SIGKILL what is left after
    `grace_s` (Ray's agents can ignore SIGTERM for a minute): what a test started, and nothing else."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    proc.wait(timeout=grace_s)


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


# --- object storage: moto's S3 server on 127.0.0.1 (one server per test module that asks) -----------

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the environment that points fsspec/s3fs at it."""
    import s3fs  # noqa: F401  (the dev extra has it: missing, the S3 tests fail, as the Ray fixture does)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # fsspec's own env config (FSSPEC_S3_*): the driver forwards it to the cluster's workers
    env = {"FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "FSSPEC_S3_KEY": "testing",
           "FSSPEC_S3_SECRET": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    import urllib.request

    def up():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200
        except OSError:
            return False

    old = {k: os.environ.get(k) for k in env}
    try:
        assert wait_for(up, timeout=60), "moto server did not start"
        os.environ.update(env)
        import fsspec

        conf = {"endpoint_url": env["FSSPEC_S3_ENDPOINT_URL"], "key": "testing", "secret": "testing"}
        fsspec.config.conf["s3"] = conf                                   # this process, too
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **conf)
        fs.mkdir("vidfeat-test")
        yield {"env": env, "fs": fs, "bucket": "vidfeat-test"}
    finally:
        import fsspec

        fsspec.config.conf.pop("s3", None)
        server.kill()
        server.wait()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
