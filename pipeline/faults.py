"""Failpoints: named places where a test (or the soak benchmark) can make this process die on purpose.

`VIDFEAT_FAILPOINTS="name[@n][,name2[@n2]]"` kills the process with SIGKILL the n-th time (default 1st)
`failpoint(name)` is reached — a real, un-catchable death, exactly like a preempted node. Unset (the
normal case) a failpoint costs one dictionary lookup. `VIDFEAT_FAILPOINT_ONCE=PATH` makes them fire
only while PATH does not exist (it is created just before dying), so a restarted process goes on.

Points: driver.result (a result row reached the driver: decode and inference under way),
commit.data (a part's data files are published, its ledger record is not), commit.ledger (both are),
publish.upload (an object-store upload has sent its first bytes), actor.batch (an inference actor got
a batch).
"""
from __future__ import annotations

import collections
import os
import signal

_hits: collections.Counter = collections.Counter()


def _armed() -> dict[str, int]:
    spec = os.environ.get("VIDFEAT_FAILPOINTS", "")
    points = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, nth = item.partition("@")
        points[name] = int(nth or 1)
    return points


def failpoint(name: str) -> None:
    """Die here (SIGKILL) if `name` is armed and this is its n-th hit; otherwise do nothing."""
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
