"""Local scratch folders of a process, named after it (`<prefix><pid>-<random>`), so that what a killed
process leaves behind (SIGKILL skips every clean-up) is swept by a later one on the same host: a folder
whose process is gone is removed. Used by the spool of remote videos and by the writers' staging of
parts and merges (`<tmp>/vidfeat-part-<pid>-*`, `<tmp>/vidfeat-compact-<pid>-*`)."""
from __future__ import annotations

import os
import shutil
import tempfile


def scratch(kind: str) -> tempfile.TemporaryDirectory:
    """`with scratch("part") as tmp:` — `<tmp>/vidfeat-<kind>-<pid>-<random>/`, removed on exit."""
    return tempfile.TemporaryDirectory(prefix=f"vidfeat-{kind}-{os.getpid()}-")


def sweep(root: str, prefix: str = "") -> list[str]:
    """Remove the entries `<prefix><pid>-…` of `root` whose process is gone; the paths removed."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    gone = [os.path.join(root, n) for n in names if n.startswith(prefix) and _gone(n[len(prefix):].split("-", 1)[0])]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


def _gone(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
