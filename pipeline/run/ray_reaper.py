"""An embedded Ray dies with its driver (issue #16 item 9): a watcher process reaps what a killed driver leaves.

Why. `ray.init()` without an address starts Ray's services (gcs_server, raylet, dashboard head, monitor,
log monitor) as children of the driver with PR_SET_PDEATHSIG, so a SIGKILL of the driver kills them at once.
The raylet's own children are not covered: the workers exit ~2 s after the raylet (socket closed), but the
dashboard agent and the runtime-env agent, which notice the dead raylet, then block their asyncio loop for
60 s in a publish of the error to the dead GCS (Ray 2.60, `process_watcher.report_raylet_error_logs`); their
SIGTERM handler runs on that loop, so they ignore SIGTERM and linger as orphans (parent pid 1) for ~60 s.
PR_SET_PDEATHSIG cannot fix this from here: a process sets it on itself (Ray does, for its services), and
these are grandchildren spawned by the C++ raylet; a subreaper on the driver does not help either, since
the driver is the process that dies. Nor can they be found later by name or by an environment mark: the
agents' setproctitle overwrites their /proc environ.

How. Right after an embedded `ray.init()`, `reap_on_driver_death()` starts one watcher (`python -I` on this
file, in its own session so a signal to the driver's process group spares it) and gives it, as JSON, the
driver's (pid, create_time) and those of Ray's service processes (`node.all_processes`) and of their
descendants. Every POLL_S the watcher records the current descendants of the session's live processes
(workers come and go under the raylet and become unreachable once the raylet is dead). When the driver is
gone, or when none of the services is left (a normal `ray.shutdown()`), it SIGTERMs whatever of that record is
still alive, SIGKILLs the rest after GRACE_S, and exits. Processes are matched by pid AND create_time (no pid
reuse), never by name; a driver that joined a cluster by address starts no services, so nothing is watched.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

POLL_S = 1.0
GRACE_S = 5.0
_watchers: dict[str, subprocess.Popen] = {}     # Ray session dir -> its watcher


def reap_on_driver_death() -> subprocess.Popen | None:
    """Start the watcher for the Ray this process has just started (once per session); None when this
    process started no Ray processes (joined a cluster, or Ray is not initialised)."""
    import ray
    import psutil                    # Ray ships it (ray/thirdparty_files), on sys.path once ray is imported

    node = getattr(ray._private.worker, "_global_node", None)
    services = [i.process.pid for infos in getattr(node, "all_processes", {}).values() for i in infos
                if getattr(i, "process", None) is not None]
    if not services:
        return None
    session = node.get_session_dir_path()
    if session in _watchers and _watchers[session].poll() is None:
        return _watchers[session]
    me = psutil.Process()
    roots = _stamp(psutil, services)
    spec = {"driver": [me.pid, me.create_time()], "roots": roots, "known": _descendants(psutil, roots)}
    with open(os.path.join(node.get_logs_dir_path(), "vidfeat_ray_reaper.log"), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), os.path.dirname(
            os.path.dirname(psutil.__file__)), json.dumps(spec)], stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, close_fds=True, start_new_session=True)
    threading.Thread(target=proc.wait, name="ray-reaper-wait", daemon=True).start()  # no zombie left
    _watchers[session] = proc
    return proc


def _stamp(psutil, pids) -> dict[int, float]:
    """{pid: create_time} of those pids that are alive."""
    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).create_time()
        except psutil.Error:
            pass
    return out


def _alive(psutil, pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and _running(psutil, proc)
    except psutil.Error:
        return False


def _running(psutil, proc) -> bool:
    """Alive and not a zombie (a zombie is dead; only its parent's wait is missing)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(psutil, known: dict[int, float]) -> dict[int, float]:
    """The live members of `known` plus all their current descendants, as {pid: create_time}."""
    found = {pid: t for pid, t in known.items() if _alive(psutil, pid, t)}
    children: dict[int, list] = {}
    for proc in psutil.process_iter(["ppid", "create_time", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.info["create_time"] is not None:
            children.setdefault(proc.info["ppid"], []).append(proc)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child.pid not in found:
                found[child.pid] = child.info["create_time"]
                todo.append(child.pid)
    return found


def _reap(psutil, known: dict[int, float]) -> None:
    """SIGTERM the live members of `known`; SIGKILL those left after GRACE_S."""
    procs = []
    for pid, created in known.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                procs.append(proc)
        except psutil.Error:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = [p for p in procs if _running(psutil, p)]
        if procs:
            print(f"ray_reaper: {sig.name} to {sorted(p.pid for p in procs)}", file=sys.stderr, flush=True)
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        procs = psutil.wait_procs(procs, timeout=GRACE_S)[1]


def _watch(psutil, spec: dict) -> None:
    """Wait for the driver's death or the services' end, then reap the session's processes."""
    driver = spec["driver"]
    roots = {int(pid): t for pid, t in spec["roots"].items()}
    known = {int(pid): t for pid, t in spec["known"].items()}
    while _alive(psutil, *driver) and any(_alive(psutil, p, t) for p, t in roots.items()):
        known = _descendants(psutil, known)
        time.sleep(POLL_S)
    gone = "driver" if not _alive(psutil, *driver) else "services"
    print(f"ray_reaper: {gone} of pid {driver[0]} gone", file=sys.stderr, flush=True)
    _reap(psutil, _descendants(psutil, known))


if __name__ == "__main__":          # the watcher: python -I ray_reaper.py PSUTIL_DIR SPEC_JSON
    sys.path.insert(0, sys.argv[1])
    import psutil
    _watch(psutil, json.loads(sys.argv[2]))
