"""One try of a storage call: run in a daemon thread, abandoned when it stops making progress.

A try that moves bytes (an upload, a download) passes an fsspec Callback to the store's client, which
counts the bytes as they go (`Callback.value`); such a try is abandoned only when that count has not
moved for its deadline, so a slow, steady transfer is never cut and a slow link never runs two copies
of one upload at once. A try that reports no progress (a listing, a small request, a client that
reports a whole single-request upload at its end) is abandoned when its deadline passes.

Python cannot interrupt an abandoned try: its thread may still end, and land, later. What it does then
must be harmless, and the callers make it so: an upload lands under a temporary name used once
(publish.py), a lease it would bring back is marked released (lease.py), a removal or move finds its
work done.
"""
from __future__ import annotations

import threading


class DeadlineExceeded(TimeoutError):
    pass


def within(seconds: float, fn, *args, progress=None, **kwargs):
    """`fn(*args, **kwargs)` in a daemon thread; DeadlineExceeded once `seconds` pass with no answer and,
    when `progress` (an fsspec Callback the call reports to) is given, no byte moved (module doc)."""
    done, box = threading.Event(), {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:                               # noqa: BLE001 - handed to the caller
            box["error"] = exc
        done.set()

    threading.Thread(target=run, name="vidfeat-storage", daemon=True).start()
    moved = _moved(progress)
    while not _wait(done, seconds):
        if progress is None or _moved(progress) == moved:
            raise DeadlineExceeded(f"no answer within {seconds:.3g} s" if progress is None else
                                   f"stalled: no byte moved for {seconds:.3g} s after {moved / 2**20:.1f} MiB")
        moved = _moved(progress)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _moved(progress) -> int:
    return int(getattr(progress, "value", 0) or 0)


def _wait(done: threading.Event, seconds: float) -> bool:
    """Whether the try ended within `seconds` (a test drives the clock through this)."""
    return done.wait(seconds)
