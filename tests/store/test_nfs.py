"""NFS (issue #27, point 7): a writer on an NFS mount whose directory listings are cached is told so,
naming the mount and the options that make the fence's listing exact; exact mounts and local disks say
nothing."""
from __future__ import annotations

import logging

import pytest

from pipeline.store import nfs
from pipeline.store.ledger import Ledger

ROOT = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"


def nfs_line(point: str, options: str) -> str:
    return f"95 22 0:52 / {point} rw,relatime shared:60 - nfs4 server:/export rw,vers=4.2,{options},hard,proto=tcp\n"


@pytest.mark.parametrize("options, exact", [
    ("acregmin=3,acregmax=60,acdirmin=30,acdirmax=60", False),                 # the defaults
    ("acregmin=0,acregmax=0,acdirmin=0,acdirmax=0", False),                    # actimeo=0, lookups cached
    ("acregmin=0,acregmax=0,acdirmin=0,acdirmax=0,lookupcache=none", True),
    ("noac,lookupcache=none", True),
    ("noac,lookupcache=positive", False),
])
def test_which_nfs_options_make_listings_exact(options, exact):
    point, fstype, found = nfs.mount_of("/data/out/features", ROOT + nfs_line("/data", options))
    assert (point, fstype) == ("/data", "nfs4") and nfs.listing_exact(fstype, found) is exact


def test_the_longest_mount_point_holds_the_path():
    table = ROOT + nfs_line("/data", "noac,lookupcache=none") + nfs_line("/data/cached", "acdirmax=60")
    assert nfs.mount_of("/data/cached/out", table)[0] == "/data/cached"
    assert nfs.mount_of("/data/cachedx/out", table)[0] == "/data"
    assert nfs.mount_of("/home/x", table)[:2] == ("/", "ext4") and nfs.listing_exact("ext4", {})


def test_a_writer_on_a_cached_nfs_mount_is_warned_once(tmp_path, monkeypatch, caplog):
    table = tmp_path / "mountinfo"
    table.write_text(ROOT + nfs_line(str(tmp_path), "acdirmin=30,acdirmax=60"))
    real = nfs.warn_if_inexact
    monkeypatch.setattr(nfs, "warn_if_inexact", lambda path: real(path, str(table)))
    monkeypatch.setattr(nfs, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="pipeline.store.nfs"):
        Ledger(str(tmp_path / "out")).claim()
        Ledger(str(tmp_path / "out")).claim()
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipeline.store.nfs"]
    assert len(warnings) == 1 and "acdirmax=60 s" in warnings[0] and nfs.EXACT_OPTIONS in warnings[0]


def test_local_disks_and_exact_mounts_say_nothing(tmp_path):
    table = tmp_path / "mountinfo"
    table.write_text(ROOT + nfs_line(str(tmp_path / "exact"), "noac,lookupcache=none"))
    assert nfs.warn_if_inexact(str(tmp_path / "exact" / "out"), str(table)) is None
    assert nfs.warn_if_inexact(str(tmp_path / "local" / "out"), str(table)) is None
    assert nfs.warn_if_inexact(str(tmp_path)) is None                          # this machine's real table
