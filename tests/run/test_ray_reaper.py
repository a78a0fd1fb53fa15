"""An embedded Ray dies with its driver (issue #16 item 9; pipeline/run/ray_reaper.py).

Each test runs a real driver in a subprocess that starts Ray through `pipeline.run.cluster.connect_ray` and the
reaper hook, runs one task that starts a grandchild (`sleep`), and writes the (pid, create_time) of every
process of its Ray session and of the watcher to a file. Whatever a test started is killed by pid (checked
against create_time) at the end, pass or fail.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil

DRIVER = r"""
import json, os, sys, time
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
from pipeline.run.cluster import connect_ray
from pipeline.run.ray_reaper import reap_on_driver_death
import ray, psutil

address, out, mode = sys.argv[1] or None, sys.argv[2], sys.argv[3]
none_before = reap_on_driver_death() is None
connect_ray(address)
watcher = reap_on_driver_death()        # idempotent: a no-op once connect_ray calls it itself

@ray.remote
def spawn():
    import subprocess
    return subprocess.Popen(["sleep", "300"]).pid

sleeper = psutil.Process(ray.get(spawn.remote()))
time.sleep(1.5)                          # the watcher has recorded the worker and its child by now
stamp = lambda p: [p.pid, p.create_time()]
procs = [p for p in psutil.Process().children(recursive=True) if watcher is None or p.pid != watcher.pid]
procs += [sleeper] * (sleeper.pid not in {p.pid for p in procs})  # on a joined cluster: not our child
doc = {"ray": [stamp(p) for p in procs], "none_before": none_before,
       "watcher": watcher and stamp(psutil.Process(watcher.pid))}
with open(out + ".tmp", "w") as f:
    json.dump(doc, f)
os.replace(out + ".tmp", out)
if mode == "shutdown":
    ray.shutdown()
    sys.exit(0)
time.sleep(600)
"""


def alive(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return predicate()


@pytest.fixture
def driver(tmp_path):
    """start(mode, address=None) -> (Popen, doc); kills by pid whatever the drivers started, at the end."""
    started: list[tuple[subprocess.Popen, str]] = []

    def start(mode: str, address: str | None = None):
        out = str(tmp_path / f"driver{len(started)}.json")
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        env.pop("RAY_ADDRESS", None)
        with open(out + ".err", "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", DRIVER, address or "", out, mode], env=env,
                                    stdout=subprocess.DEVNULL, stderr=err)
        started.append((proc, out))
        ready = wait_until(lambda: os.path.exists(out) or proc.poll() is not None, timeout=180)
        assert ready and os.path.exists(out), f"driver failed: {open(out + '.err').read()[-3000:]}"
        with open(out) as f:
            return proc, json.load(f)

    yield start
    for proc, out in started:
        ours = []
        if proc.poll() is None:     # a driver that failed half-way: its descendants too
            ours = [[p.pid, p.create_time()] for p in psutil.Process(proc.pid).children(recursive=True)]
            proc.kill()
        proc.wait(timeout=30)
        if os.path.exists(out):
            with open(out) as f:
                doc = json.load(f)
            ours += doc["ray"] + ([doc["watcher"]] if doc["watcher"] else [])
        for pid, created in ours:
            if alive(pid, created):
                os.kill(pid, signal.SIGKILL)


def survivors(doc: dict) -> list[str]:
    return [f"{pid} {psutil.Process(pid).name()}" for pid, t in doc["ray"] if alive(pid, t)]


def test_sigkill_of_the_driver_leaves_no_ray_process_after_30s(driver):
    proc, doc = driver("kill")
    names = {psutil.Process(pid).name() for pid, t in doc["ray"] if alive(pid, t)}
    assert {"raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "sleep"} <= names
    assert doc["watcher"] and alive(*doc["watcher"])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert wait_until(lambda: not survivors(doc), timeout=30), f"left after 30 s: {survivors(doc)}"
    assert wait_until(lambda: not alive(*doc["watcher"]), timeout=15), "the watcher did not exit"


def test_normal_shutdown_leaves_no_watcher(driver):
    proc, doc = driver("shutdown")
    assert doc["watcher"] and doc["none_before"]
    assert proc.wait(timeout=60) == 0
    assert wait_until(lambda: not alive(*doc["watcher"]), timeout=15), "the watcher outlived ray.shutdown()"
    assert not survivors(doc)


def test_a_driver_that_joined_a_cluster_starts_no_watcher(driver, ray_head):
    proc, doc = driver("shutdown", ray_head["address"])
    assert doc["watcher"] is None and doc["none_before"]
    assert proc.wait(timeout=60) == 0


def test_sigkill_of_vidfeat_extract_leaves_no_process_of_the_run(tmp_path):
    """The whole command as a user runs it: `vidfeat extract` (the supervisor), its driver child and the
    embedded Ray, caught mid-run (midrun.py). SIGKILL of the command's pid: within 30 s none of them is left."""
    from midrun import caught_mid_run

    stamps = []
    with caught_mid_run(tmp_path) as run:
        try:
            stamps = [(p.pid, p.create_time()) for p in psutil.Process(run.proc.pid).children(recursive=True)]
            assert len(stamps) > 5                            # the driver, Ray's services, workers
            run.proc.kill()
            run.proc.wait()
            deadline = time.monotonic() + 30
            while any(alive(*s) for s in stamps) and time.monotonic() < deadline:
                time.sleep(0.5)
            left = [psutil.Process(pid).name() for pid, created in stamps if alive(pid, created)]
            assert not left, f"left 30 s after SIGKILL: {left}"
        finally:
            for pid, created in stamps:
                if alive(pid, created):
                    os.kill(pid, signal.SIGKILL)
