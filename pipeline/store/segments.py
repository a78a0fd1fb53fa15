"""Data files and the segments they belong to: file names, which files are live, garbage collection.

A segment's files are `videos/<seg>.parquet`, `clips/<seg>.parquet`, `hdf5/<seg>.h5` and
`failures/<seg>.parquet` (each kind only when it has rows). Names starting with "." are never read as
published data: `.tmp-…` is a publish in progress, and `.compact-<seg>.<ext>` is a compaction's merged
file, *staged*: it becomes `<seg>.<ext>` once the files it replaces are deleted, so that even a glob
over a data folder never sees a video twice (see compact.py). Until then readers of a live segment
read its staged file.
"""
from __future__ import annotations

import logging

from pipeline.store.sweep import sweep

log = logging.getLogger(__name__)

EXT = {"videos": "parquet", "clips": "parquet", "hdf5": "h5", "failures": "parquet"}
DATA_DIRS = tuple(EXT)
STAGED = ".compact-"
LISTING_ATTEMPTS = 5


def file_name(segment: str, sub: str, staged: bool = False) -> str:
    """The name of `segment`'s file in data folder `sub`."""
    return f"{STAGED if staged else ''}{segment}.{EXT[sub]}"


def parse(name: str) -> tuple[str | None, bool]:
    """A data file's name → (its segment, whether staged); (None, False) for a temporary."""
    staged = name.startswith(STAGED)
    if staged:
        name = name[len(STAGED):]
    if name.startswith("."):
        return None, False
    return name.split(".", 1)[0], staged


def by_segment(paths: list[str]) -> dict[str, str]:
    """Segment → path of its file among `paths` (one folder's listing); a published file wins over a
    staged one of the same segment."""
    found: dict[str, str] = {}
    for path in sorted(paths, key=lambda p: not parse(_name(p))[1]):      # staged first, published last
        segment, _ = parse(_name(path))
        if segment is not None:
            found[segment] = path
    return found


def listing(ledger, subs=DATA_DIRS, state=None) -> tuple:
    """(state, {sub: every entry of sub/}): each data folder listed once, between two loads that agree on
    the live segments (the first is `state` when given). A live segment's files exist for as long as it
    is live (merged files are staged before their record, replaced ones deleted after it), so a
    compaction meanwhile cannot make the listing miss a video or hold one twice."""
    for _ in range(LISTING_ATTEMPTS):
        before = state or ledger.load()
        listed = {sub: ledger.ls(sub) for sub in subs}
        if ledger.load().segments == before.segments:
            return before, listed
        state = None
    raise FileNotFoundError(f"{ledger.out}: the live parts kept changing while {', '.join(subs)} were listed")


def live(state, paths: list[str]) -> list[str]:
    """The files among `paths` (one data folder) of `state`'s live segments, in commit order."""
    listed = by_segment(paths)
    return [listed[s] for s in sorted(state.segments) if s in listed]


def live_files(ledger, sub: str, state=None) -> list[str]:
    """Files of live segments in data folder `sub`, in commit (segment name) order (see `listing`)."""
    state, listed = listing(ledger, (sub,), state)
    return live(state, listed[sub])


def collect_garbage(ledger, state) -> list[str]:
    """Delete files of segments that are not live (uncommitted, or replaced by a compaction) and
    temporaries, and what dead writers staged elsewhere (sweep.py); publish staged files of live segments
    (a compaction killed before it did). Writers
    only, after their claim: what was listed is deleted only once the fence holds (records.py), so no
    file a later writer published can be among them. Returns the deleted paths."""
    listed = {sub: ledger.ls(sub) for sub in DATA_DIRS}
    ledger.check_fence()
    removed = []
    for sub, paths in listed.items():
        for path in paths:
            segment, staged = parse(_name(path))
            if segment is None or segment not in state.segments:
                ledger.fs.rm(path)
                removed.append(path)
            elif staged:
                ledger.fs.mv(path, ledger.path(sub, file_name(segment, sub)))
    if removed:
        log.warning("removed %d file(s) of uncommitted or replaced parts", len(removed))
    return removed + sweep(ledger)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]
