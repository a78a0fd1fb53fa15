"""Failpoints: named places where a test (or the soak benchmark) can make this process die on purpose.

`VIDFEAT_FAILPOINTS="name[@n][,name2[@n2]]"` kills the process with SIGKILL the n-th time (default 1st)
`failpoint(name)` is reached — a real, un-catchable death, exactly like a preempted node. Unset (the
normal case) a failpoint costs one dictionary lookup. `VIDFEAT_FAILPOINT_ONCE=PATH` makes them fire
only while PATH does not exist (it is created just before dying), so a restarted process goes on.

`VIDFEAT_PAUSEPOINTS` (same syntax) with `VIDFEAT_PAUSE_DIR=DIR` makes the n-th hit of a point *pause*
instead (a test's hold on a phase, to land a signal inside it): it creates `DIR/<name>.paused`, then
waits until `DIR/<name>.go` exists (at most PAUSE_S); signals are taken meanwhile, as anywhere else.
With `VIDFEAT_PAUSE_BARRIER=FILE` it waits instead for a shared lock on FILE, which the test holds
exclusively: releasing it wakes every process held there at the same instant (two writers started
together).

Points: lease.published (a writer published its lease, has not looked at the others'), claim.create (it
is about to create the output's next claim), claim.epoch (a writer claimed its epoch, the state is not
yet published), ray.started (the run
joined or started Ray, nothing is streamed yet), driver.result (a result row reached the driver: decode
and inference under way), commit.data (a part's data files are published, its ledger record is not),
commit.ledger (both are), fold.index (a fold published the new index, the records are not archived),
compact.data (a merge's files are staged, `.compact-*`, its record is not published), compact.record
(it is), run.record (the run is about to be recorded), publish.upload (an object-store upload has sent
its first bytes), actor.batch (an inference actor got a batch).
"""
from __future__ import annotations

import collections
import os
import signal
import time

PAUSE_S = 600.0
_hits: collections.Counter = collections.Counter()
_pauses: collections.Counter = collections.Counter()


def _armed(variable: str = "VIDFEAT_FAILPOINTS") -> dict[str, int]:
    spec = os.environ.get(variable, "")
    points = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, nth = item.partition("@")
        points[name] = int(nth or 1)
    return points


def failpoint(name: str) -> None:
    """Die here (SIGKILL) if `name` is armed and this is its n-th hit (pause, if armed to; module doc);
    otherwise do nothing."""
    if "VIDFEAT_PAUSEPOINTS" in os.environ:
        _pause(name)
    if "VIDFEAT_FAILPOINTS" not in os.environ:
        return
    nth = _armed().get(name)
    if nth is None:
        return
    _hits[name] += 1
    if _hits[name] != nth:
        return
    once = os.environ.get("VIDFEAT_FAILPOINT_ONCE")
    if once:
        if os.path.exists(once):
            return
        open(once, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)


def _pause(name: str) -> None:
    """Wait at `name` for the test's word, if it is armed to pause and this is its n-th hit (module doc)."""
    nth = _armed("VIDFEAT_PAUSEPOINTS").get(name)
    if nth is None:
        return
    _pauses[name] += 1
    if _pauses[name] != nth:
        return
    folder = os.environ["VIDFEAT_PAUSE_DIR"]
    open(os.path.join(folder, f"{name}.paused"), "w").close()
    if "VIDFEAT_PAUSE_BARRIER" in os.environ:
        import fcntl

        with open(os.environ["VIDFEAT_PAUSE_BARRIER"], "a") as barrier:
            fcntl.flock(barrier, fcntl.LOCK_SH)             # blocks until the test lets go of its lock
        return
    deadline = time.monotonic() + PAUSE_S
    while not os.path.exists(os.path.join(folder, f"{name}.go")) and time.monotonic() < deadline:
        time.sleep(0.05)
