"""Joining a cluster that cannot be joined (issue #30): an address where nothing listens ends at once
with one line naming it (Ray itself retries for minutes), and a cluster that refuses the driver's
credentials is a configuration error (exit 2) that says so on the console, not an I/O error. An address
where nothing listens is found before the output is touched."""
from __future__ import annotations

import os
import socket

import pytest

from pipeline.errors import ClusterUnreachable
from pipeline.synthetic.samples import write_index_video
from pipeline.run import cluster

from conftest import free_port, run_cli

GCS_LOG = ("[2026-12-06 19:42:21,783 W 17775 17775] gcs_client.cc:210: Failed to get cluster ID from GCS "
           "server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("join")
    write_index_video(str(root / "a.mp4"), num_frames=20)
    return str(root)


def extract(videos: str, out: str, address: str, **env):
    return run_cli("extract", videos, "--out", out, "--preset", "tiny", "--checkpoint", "random",
                   "--address", address, "--no-progress", env_extra=env, timeout=240)


def test_an_address_where_nothing_listens_is_69_at_once_naming_it(videos, tmp_path):
    address, out = f"127.0.0.1:{free_port()}", str(tmp_path / "out")
    done = extract(videos, out, address)
    assert done.returncode == 69, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Ray cluster at {address} (nothing listens there)" in lines[0]
    assert not os.path.exists(out)                                      # the output was not touched


def test_a_cluster_that_refuses_the_credentials_is_a_configuration_error(ray_head, videos, tmp_path):
    out = str(tmp_path / "out")
    done = extract(videos, out, ray_head["address"], RAY_AUTH_MODE="disabled")
    assert done.returncode == 2, done.stderr
    line, = [line for line in done.stderr.splitlines() if line.startswith("vidfeat extract:")]
    assert "refused this driver's credentials" in line and "InvalidAuthToken" in line and "RAY_AUTH_MODE" in line


def test_the_probe_passes_a_listening_address_and_names_a_silent_one(monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as server:
        cluster.check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
        cluster.check_reachable(f"ray://127.0.0.1:{server.getsockname()[1]}")
    for address in (None, "auto", "local"):
        cluster.check_reachable(address)                                # Ray resolves these itself

    def silent(*args, timeout):
        raise TimeoutError("timed out")
    monkeypatch.setattr(cluster.socket, "create_connection", silent)
    monkeypatch.setenv("VIDFEAT_RAY_CONNECT_S", "7")
    with pytest.raises(ClusterUnreachable, match=r"at 127\.0\.0\.1:6379 \(no answer within 7 s\)"):
        cluster.check_reachable("127.0.0.1:6379")                       # a black-holed one, as it answers


def test_an_auth_failure_is_read_from_rays_native_log():
    assert cluster._auth_failure("other line\n" + GCS_LOG).endswith(
        "Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
    assert cluster._auth_failure("Failed to connect: connection refused\n") is None
