"""Whether a writer's lease is alive: its age by the store's own clock, and its holder's process.

A lease's age is the store's time from the last heartbeat that landed to now, both read from the store:
"now" is when the store stamped the lease this writer has just published, "then" when it stamped the
other one. Two hosts' clocks never meet, so a host whose clock is an hour off neither keeps a dead lease
alive nor takes a live one for dead. (A store that keeps no modification times falls back to the
heartbeat's own time against this host's clock.)

A lease is alive while younger than STALE_S — except that a lease taken on this host, in this boot and in
this pid namespace, by a process that no longer exists is dead at once, so a run killed a moment ago can
be started again right away. Nothing else is dead before STALE_S: a pid that cannot be seen from another
pid namespace (containers sharing a hostname), nor a host of the same name in another boot (as likely a
cloned image or another pod as this host rebooted).
"""
from __future__ import annotations

import datetime
import os
import socket
import time

STALE_S = 300.0
STAMPS = ("mtime", "LastModified", "last_modified", "updated", "created")   # fsspec stores' names for it


def modified(info: dict | None) -> float | None:
    """When the store last wrote the entry `info` (an fsspec `ls(detail=True)` row), in seconds since the
    epoch by the store's clock; None when it does not say."""
    for key in STAMPS:
        value = (info or {}).get(key)
        if isinstance(value, str):
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, datetime.datetime):
            return (value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)).timestamp()
        if isinstance(value, (int, float)) and value:
            return float(value)
    return None


def age(lease: dict, stamped: float | None, now: float | None) -> float:
    """Seconds since `lease`'s last heartbeat landed: the store's `now` less the store's stamp of it (module
    doc), or this host's clock less the heartbeat's own time where the store keeps no times."""
    if stamped is None or now is None:
        return time.time() - float(lease.get("heartbeat", 0))
    return max(0.0, now - stamped)


def alive(lease: dict) -> bool:
    """Whether `lease` (with its "age", see `age`) may still have a writer (module doc)."""
    if lease["age"] > STALE_S:
        return False
    here = namespace()
    if lease.get("host") != socket.gethostname() or not here or lease.get("boot") != here["boot"] \
            or lease.get("pidns") != here["pidns"]:
        return True                                 # its pid means nothing here: wait for STALE_S
    try:
        os.kill(int(lease["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespace() -> dict:
    """This process's boot id and pid namespace (Linux); {} where they cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return {"boot": boot, "pidns": os.readlink("/proc/self/ns/pid")}
    except OSError:
        return {}


def describe(lease: dict) -> str:
    return f"pid {lease.get('pid')} on {lease.get('host')}, started {time.ctime(float(lease.get('started', 0)))}, " \
           f"last heartbeat {lease['age']:.0f} s ago"
