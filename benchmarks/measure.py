"""What the benchmarks measure a process by, and what they measure on: memory (RSS) and CPU seconds read
from /proc and getrusage, the tree of processes a benchmark started (to stop exactly that), and a moto S3
server on 127.0.0.1.

Torch-free, and light at import (the server's modules load when one starts): decode benchmarks import it
in processes that must not load torch, and the decode slot measurement imports it into the very process
whose memory it reports. Linux: it reads /proc.
"""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from typing import NamedTuple

_MEMORY_FIELDS = ("VmHWM", "VmRSS")


def memory_mib(pid: int | str = "self") -> dict[str, float]:
    """{"VmHWM": peak RSS, "VmRSS": RSS now} of a live process in MiB, from /proc/<pid>/status; {} once
    it is gone. VmHWM, not getrusage's ru_maxrss: a child's ru_maxrss counts its parent's RSS from
    before the exec (vfork), so a child of a big benchmark would report the benchmark's peak."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return {l.split(":")[0]: int(l.split()[1]) / 1024 for l in fh if l.startswith(_MEMORY_FIELDS)}
    except OSError:
        return {}


def supervised_driver(pid: int, wait_s: float = 30.0) -> int:
    """The driver process of a `vidfeat extract` started as `pid`: its supervised child (pipeline/
    supervise.py), which holds the run; `pid` itself if it has none within `wait_s`."""
    import time

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                children = fh.read().split()
        except OSError:
            return pid
        if children:
            return int(children[0])
        time.sleep(0.05)
    return pid


def cpu_seconds(pids=(), children: bool = False) -> float:
    """User+system CPU seconds of this process (or, with `children`, of its waited-for children) plus
    those of the live processes `pids` (a decode worker, say: getrusage does not see them until waited)."""
    own = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = proc_stat(pid)
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first: field 3 of proc(5))."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


# ---------------------------------------------------------------------- the processes a benchmark started

def descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid`, as {pid: start time} (the start time tells a reused pid apart).
    Found by parent pid, not by process group or name: Ray's workers make their own process groups, and
    a process of the same name may be someone else's."""
    children, started = _process_table()
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found[child] = started[child]
            todo.append(child)
    return found


def _process_table() -> tuple[dict[int, list[int]], dict[int, str]]:
    """Every live process now: {parent pid: [child pids]} and {pid: start time}."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = proc_stat(int(name))
        except OSError:
            continue                                    # gone since the listing
        children.setdefault(int(fields[1]), []).append(int(name))
        started[int(name)] = fields[19]
    return children, started


def kill_tree(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL `proc`, its process group when it leads one (start_new_session) and every process below it,
    then wait (up to `timeout`) until they are gone: what the benchmark started, and nothing else."""
    tree = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + timeout
    while (tree := {p: t for p, t in tree.items() if _alive(p, t)}) and time.monotonic() < deadline:
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _alive(pid: int, started: str) -> bool:
    """Whether `pid` is still the process that started at `started`, and not a zombie."""
    try:
        fields = proc_stat(pid)
    except OSError:
        return False
    return fields[19] == started and fields[0] not in ("Z", "X")


# ---------------------------------------------------------------------- moto's S3 server

class S3(NamedTuple):
    """A running moto server: its bucket's URL (`root`), endpoint, the environment that points fsspec at it
    (also set in this process while it runs, for subprocesses and Ray workers), and a filesystem on it."""
    root: str
    endpoint: str
    env: dict
    fs: object


@contextlib.contextmanager
def moto_s3(bucket: str = "vidfeat-bench"):
    """Start moto's S3 server on 127.0.0.1 (a free port), point fsspec at it (env and this process's
    config), make `bucket`, yield an `S3`; then restore the settings and stop the server it started."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_up(endpoint + "/", server)
        with _fsspec_s3(endpoint) as (env, fs):
            fs.mkdir(bucket)
            yield S3(f"s3://{bucket}", endpoint, env, fs)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it; moto binds it a moment later)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    """Return once `url` answers 200; fail at once if the server exits, or after `timeout`."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto server at {url} did not start (exit status {server.poll()})")


@contextlib.contextmanager
def _fsspec_s3(endpoint: str):
    """fsspec's S3 settings for `endpoint`: in the environment (read by fsspec when a process imports it)
    and in this process's fsspec config; the previous values come back afterwards."""
    import fsspec

    env = {"FSSPEC_S3_ENDPOINT_URL": endpoint, "FSSPEC_S3_KEY": "testing", "FSSPEC_S3_SECRET": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved_env, saved_conf = {k: os.environ.get(k) for k in env}, fsspec.config.conf.get("s3")
    os.environ.update(env)
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    try:
        yield env, fsspec.filesystem("s3", skip_instance_cache=True, **fsspec.config.conf["s3"])
    finally:
        for k, v in saved_env.items():
            _restore(os.environ, k, v)
        _restore(fsspec.config.conf, "s3", saved_conf)


def _restore(mapping, key: str, value) -> None:
    """Put `value` back under `key`; None: there was none."""
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value
