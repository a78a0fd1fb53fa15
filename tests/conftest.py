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
import tempfile
import time

import pytest

from pipeline.config import Config
from pipeline.synthetic.samples import write_index_video, write_random_bytes

# Token authentication (Ray's default) with a token made for this test session: `ray start`, drivers
# and `ray job submit` all read RAY_AUTH_TOKEN, so a fresh machine needs no ~/.ray/auth_token.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32)}
os.environ.update(LOOPBACK_ENV)        # before anything imports ray: it reads these at import time
# The scripts of the environment that runs the tests (`ray`, `vidfeat`) first on PATH: an environment's
# python run without activating it starts that environment's Ray, not another installation's (or none).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


# The test files that take longest (whole runs, servers, Slurm), longest first (their summed durations,
# BENCHMARKS.md "The test suite's time"): collected first, so the two pytest-xdist workers (`--dist
# loadfile`, pyproject.toml) start on them and finish on short files, not one of them alone on a long one
# at the end. xdist keeps this order only with `--no-loadscope-reorder` (pyproject.toml); by default it
# sends the files with most tests first. Only the order changes; every test still runs.
LONGEST_FIRST = ("run/test_stop_phases.py", "store/test_storage_faults.py", "store/test_object_stores.py",
                 "jobs/test_slurm.py", "run/test_pipeline.py", "run/test_reliability.py", "cli/test_exit_codes.py",
                 "run/test_cluster.py", "store/test_compact.py", "store/test_protocol_stateful.py",
                 "run/test_ray_reaper.py", "run/test_graceful_stop.py", "benchmarks/test_gpu_check.py",
                 "run/test_metrics.py", "cli/test_demo.py")


def pytest_collection_modifyitems(items) -> None:
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)                      # stable: within a file, and for the rest, the order collected


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
    """A `ray start --head` cluster on 127.0.0.1: {"address", "dashboard", "agent_port"}; stopped after the
    session.

    It runs with `--block` in a session of its own, so that what this test session started is exactly
    that process and its descendants, and only they are stopped (`stop_tree`): never `ray stop`, which
    stops every Ray on the machine, a user's own cluster and another test run included."""
    if shutil.which("ray") is None:
        pytest.fail("the `ray` command is missing: install the package with its dependencies")
    # Ray's sockets live under its temp dir and a socket's path may not exceed 107 bytes: a folder of
    # its own directly under /tmp, not under pytest's (`popen-gw0/` deeper with pytest-xdist: the
    # dashboard's `sockets/dash_MetricsHead` no longer fits, and the head dies at start)
    temp = tempfile.mkdtemp(prefix="vfray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    port, dash, agent = free_port(), free_port(), free_port()
    # the job agent on a free port too: at its default (52365) another Ray on the machine would hold it,
    # and `ray job submit` would be told "No available agent to submit job"
    cmd = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--num-gpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}", "--disable-usage-stats"]
    log = os.path.join(temp, "head.log")
    with open(log, "w") as out:
        head = subprocess.Popen(cmd, env=ray_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        up = wait_for(lambda: head.poll() is not None or _head_up(address), timeout=180)
        assert up and head.poll() is None, f"`ray start --head` failed ({head.poll()}): {open(log).read()[-3000:]}"
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dash}", "agent_port": agent}
    finally:
        stop_tree(head)
        shutil.rmtree(temp, ignore_errors=True)


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


@pytest.fixture(scope="session")
def head_config(ray_head, tiny_config):
    """`tiny_config` joining `ray_head` with one inference actor (`--num-actors 1` on a command line): the
    head's two logical GPUs would start two, each a process that imports torch and builds the model (~6 s
    of CPU a run). For the runs whose point is not how inference spreads over actors."""
    return tiny_config.replace(run={"address": ray_head["address"], "num_actors": 1})


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


# --- object storage: a server per store on 127.0.0.1 (one per test module that asks) --------------------
# moto (S3), gcp-storage-emulator (GCS) and Azurite (Azure Blob), each started by the test session on a
# free loopback port and stopped after the module, with the bucket BUCKET and the fsspec settings that
# point at it: in this process (fsspec.config.conf) and in the environment a test gives its subprocesses
# (`env`: FSSPEC_<PROTOCOL>_*, which the driver forwards to the cluster's workers). `exclusive_create`
# says whether the server refuses a second `pipe_file(mode="create")` of one name, probed at the start:
# an emulator that ignores the precondition is named by the tests that need it, never taken for the
# store. A missing emulator fails the tests when CI is set (.ci/run installs it) and skips them otherwise.

BUCKET = "vidfeat-test"                     # 3-63 characters: Azure's rule for a container's name
# gcp-storage-emulator's own command, with a 3 s socket timeout on its (single) request handler (see `gcs`)
GCS_EMULATOR = ("import sys; from gcp_storage_emulator import server; server.RequestHandler.timeout = 3; "
                "from gcp_storage_emulator.__main__ import main; sys.exit(main())")
# Azurite's documented development account (devstoreaccount1): the same key on every Azurite
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the environment that points fsspec/s3fs at it."""
    import s3fs  # noqa: F401  (the dev extra has it: missing, the S3 tests fail, as the Ray fixture does)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    conf = {"endpoint_url": url, "key": "testing", "secret": "testing"}
    env = {"FSSPEC_S3_ENDPOINT_URL": url, "FSSPEC_S3_KEY": "testing", "FSSPEC_S3_SECRET": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with object_store(cmd, port, "s3", conf, env) as store:
        yield store


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """gcp-storage-emulator on 127.0.0.1 and the environment that points fsspec/gcsfs at it.

    gcsfs's default class (ExtendedGcsFileSystem, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT on) first asks the
    Storage Control API, over gRPC, for the bucket's layout, and does not cache a failed answer; the
    emulator has no gRPC API, so every call would wait 60 s for that to fail. Here, and in the
    subprocesses, gcsfs is its core GCSFileSystem: what the extended one delegates to for a standard
    (not zonal) bucket. The emulator has no objects.moveTo either: here a move copies and deletes at
    once (`gcsfs_on_the_emulator`); a subprocess that moves (a compaction) waits ~30 s a move first.
    The emulator serves one connection at a time and waits without limit for a request on it: a
    connection the client opened and dropped unused (gcsfs's read-ahead cancels reads) stalls every
    client; it runs here with a 3 s limit on each wait (GCS_EMULATOR). Its access log (`log`) shows each
    request line, its query included."""
    import importlib.util

    import gcsfs.core  # noqa: F401  (the dev extra has it)

    emulator(importlib.util.find_spec("gcp_storage_emulator"), "gcp-storage-emulator",
             "the dev extra installs it: pip install -e '.[dev]'")
    port, log = free_port(), tmp_path_factory.mktemp("gcs") / "access.log"
    url = f"http://127.0.0.1:{port}"
    conf = {"endpoint_url": url, "token": "anon", "project": BUCKET}
    env = {"FSSPEC_GCS_ENDPOINT_URL": url, "FSSPEC_GCS_TOKEN": "anon", "FSSPEC_GCS_PROJECT": BUCKET,
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    cmd = [sys.executable, "-c", GCS_EMULATOR, "start", "-H", "127.0.0.1", "--port", str(port), "--in-memory"]
    with gcsfs_on_the_emulator(), object_store(cmd, port, "gcs", conf, env, log=log) as store:
        yield {**store, "log": log}


@pytest.fixture(scope="module")
def azure(tmp_path_factory):
    """Azurite's Blob service on 127.0.0.1 (in memory, no telemetry) and the environment that points
    fsspec/adlfs at it. `--skipApiVersionCheck`: azure-storage-blob may speak a newer REST version than
    this Azurite knows; what the tests use is older than both."""
    import adlfs  # noqa: F401  (the dev extra has it)

    command = emulator(shutil.which("azurite-blob"), "azurite-blob", "npm install -g azurite (.ci/run does)")
    port, home = free_port(), tmp_path_factory.mktemp("azurite")
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    cmd = [command, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
           "--disableTelemetry", "--skipApiVersionCheck"]
    with object_store(cmd, port, "abfs", {"connection_string": conn}, {"FSSPEC_ABFS_CONNECTION_STRING": conn},
                      log=home / "access.log", cwd=home) as store:
        yield store


def emulator(found, name: str, install: str):
    """`found` (where the store emulator `name` was found); when it was not (None), fail if CI is set,
    skip otherwise."""
    if found is None:
        why = f"the store emulator `{name}` is missing ({install})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)                        # CI installs it: missing there is a broken CI, not a skip
        pytest.skip(why + "; this store's tests did not run (CI runs them)")
    return found


@contextlib.contextmanager
def gcsfs_on_the_emulator():
    """gcsfs in this process as it can run on gcp-storage-emulator, put back afterwards: gs:// and gcs://
    served by its core GCSFileSystem whatever class gcsfs exported when it was imported (see the `gcs`
    fixture), and a move copies and deletes at once. (gcsfs moves with the objects.moveTo API, which the
    emulator lacks: it answers 501, which gcsfs retries for about 30 s before it copies and deletes.)"""
    import importlib

    import fsspec
    from fsspec.asyn import AsyncFileSystem
    from gcsfs.core import GCSFileSystem

    registry = importlib.import_module("fsspec.registry")._registry     # (`fsspec.registry` is a read-only view)
    saved = {p: registry.get(p) for p in GCSFileSystem.protocol}
    move = GCSFileSystem.__dict__["_mv_file"]
    for p in GCSFileSystem.protocol:
        fsspec.register_implementation(p, GCSFileSystem, clobber=True)
    GCSFileSystem._mv_file = AsyncFileSystem._mv_file                  # copy, then delete
    try:
        yield
    finally:
        GCSFileSystem._mv_file = move
        for p, cls in saved.items():
            if cls is None:
                registry.pop(p, None)
            else:
                registry[p] = cls


@contextlib.contextmanager
def object_store(cmd: list, port: int, protocol: str, conf: dict, env: dict, log=None, cwd=None):
    """Run the server `cmd` (listening on `port`) and point fsspec's `protocol` at it (`conf` here, `env`
    for subprocesses) until the block ends; yields {"env", "fs", "bucket", "protocol", "exclusive_create"}."""
    import fsspec

    out = open(log, "wb") if log else subprocess.DEVNULL
    server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    old = {k: os.environ.get(k) for k in env}
    try:
        assert wait_for(lambda: server.poll() is not None or answers(port), timeout=60), f"{cmd[0]} did not start"
        assert server.poll() is None, f"`{' '.join(cmd)}` exited with {server.returncode} (output: {log})"
        os.environ.update(env)
        fsspec.config.conf[protocol] = conf                               # this process, too
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **conf)
        fs.mkdir(BUCKET)
        yield {"env": env, "fs": fs, "bucket": BUCKET, "protocol": protocol,
               "exclusive_create": refuses_second_create(fs, f"{BUCKET}/.probe-exclusive-create")}
    finally:
        fsspec.config.conf.pop(protocol, None)
        stop_tree(server)
        if log:
            out.close()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def answers(port: int) -> bool:
    """Whether an HTTP server answers on 127.0.0.1:`port` (any status: an error is an answer)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def refuses_second_create(fs, path: str) -> bool:
    """Whether the store refuses `pipe_file(mode="create")` over an existing object (FileExistsError),
    as S3's If-None-Match, GCS's ifGenerationMatch=0 and Azure's If-None-Match: * do; the probe's object
    is removed."""
    fs.pipe_file(path, b"first", mode="create")
    try:
        fs.pipe_file(path, b"second", mode="create")
        return False
    except FileExistsError:
        return True
    finally:
        fs.rm(path)
