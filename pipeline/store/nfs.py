"""NFS: whether the fence's directory listings are exact on the output's mount.

The fence (claims.py) asks "did a later writer claim?" by listing `ledger/claims/`. On NFS a client
caches directory contents and attributes for up to `acdirmax` seconds (default 60), and negative lookups
with the default `lookupcache=all`, so a listing can miss a claim another client made: a writer paused
past its lease could then commit for up to a minute after a takeover. Exclusive creates stay exact (the
server decides a LINK), so two writers never both claim one epoch; what the caches blur is how soon a
paused writer notices it lost.

Listings are exact with `noac` or `actimeo=0` (or `acdirmin=0,acdirmax=0`) together with
`lookupcache=none`. A writer on an NFS mount without them is warned once, naming the mount and the
options to add (`warn_if_inexact`); local disks and object stores are exact and say nothing.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

EXACT_OPTIONS = "noac,lookupcache=none (or actimeo=0,lookupcache=none)"
_warned: set[str] = set()


def mount_of(path: str, mountinfo: str) -> tuple[str, str, dict[str, str]] | None:
    """(mount point, file system type, options) of the mount holding `path`, from the text of
    /proc/self/mountinfo; the per-mount and the super-block options merged. None if none matches."""
    best = None
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        head, tail = fields.split(), rest.split()
        if len(head) < 6 or len(tail) < 3:
            continue
        point = head[4].replace("\\040", " ")
        if _contains(point, path) and (best is None or len(point) > len(best[0])):
            best = (point, tail[0], _options(head[5] + "," + tail[2]))
    return best


def listing_exact(fstype: str, options: dict[str, str]) -> bool:
    """Whether directory listings on a mount of `fstype` with `options` are never served from a cache."""
    if not fstype.startswith("nfs"):
        return True
    no_attr_cache = "noac" in options or options.get("actimeo") == "0" or (
        options.get("acdirmin") == "0" and options.get("acdirmax") == "0")
    return no_attr_cache and options.get("lookupcache") == "none"


def warn_if_inexact(path: str, mountinfo_file: str = "/proc/self/mountinfo") -> str | None:
    """Warn (once a mount) when the output at local `path` is on NFS with cached listings; the warning."""
    try:
        with open(mountinfo_file) as fh:
            found = mount_of(os.path.realpath(path), fh.read())
    except OSError:
        return None
    if found is None or listing_exact(found[1], found[2]) or found[0] in _warned:
        return None
    _warned.add(found[0])
    message = (f"{path} is on NFS ({found[1]} at {found[0]}) with cached directory listings (acdirmax="
               f"{found[2].get('acdirmax', '60')} s, lookupcache={found[2].get('lookupcache', 'all')}): a writer "
               f"paused past its lease may not see a takeover for that long. Mount it with {EXACT_OPTIONS} "
               f"for an exact fence")
    log.warning("%s", message)
    return message


def _contains(point: str, path: str) -> bool:
    return path == point or path.startswith(point.rstrip("/") + "/")


def _options(text: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in text.split(",") if item)
    return {key: value for key, _, value in pairs}
