"""Compaction: small committed parts merged into large files, atomically and ledger-aware.

`vidfeat compact` is SIGKILLed at every step (merged files published / compaction record / replaced files
deleted / fold index / fold records); after each kill, readers see every video exactly once with the
same numbers, and a second compaction finishes the job. A reader running in a loop during a compaction
never sees a video twice or misses one.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import threading

import pytest

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.compaction import compact, plan
from pipeline.store.lease import WriterLease
from pipeline.store.ledger import Ledger
from pipeline.read.verify import verify

from conftest import run_cli
from partkit import PARTS, assert_same, build_output, build_output_on_s3, snapshot


def live_files(out: str, sub: str) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(f"{out}/{sub}/*"))


def glob_ids(out: str) -> list[str]:
    """What a reader that globs videos/*.parquet (pandas, duckdb) would see."""
    files = glob.glob(f"{out}/videos/*.parquet")
    return [v for f in files for v in pq.read_table(f, columns=["video_id"]).column("video_id").to_pylist()]


@pytest.fixture()
def output(tmp_path):
    out = str(tmp_path / "out")
    build_output(out)
    return out


def test_compaction_merges_parts_into_few_files_with_the_same_rows(output):
    before, failures = snapshot(output), Ledger(output).load().failed
    report = compact(output, target_mb=1)
    assert report.files_before == {"videos": PARTS, "clips": PARTS, "hdf5": PARTS, "failures": 5}
    assert report.files_after == {"videos": 1, "clips": 1, "hdf5": 1, "failures": 1}
    assert_same(before, snapshot(output))
    assert Ledger(output).load().failed == failures and verify(output)["ok"]
    assert live_files(output, "videos") == [f"{name}.parquet" for name in sorted(Ledger(output).load().segments)]
    assert live_files(output, "videos")[0].startswith("part-run0-00000-c")


def spy_on_s3_reads(monkeypatch) -> tuple[list, list]:
    """From now on, in this process: s3fs's GetObject requests for HDF5 files, as (key, byte range or None
    for the whole object), and its opens of HDF5 files for reading, as paths."""
    from s3fs import S3FileSystem

    gets, opens = [], []
    call_s3, open_ = S3FileSystem._call_s3, S3FileSystem._open

    async def spy_call(self, method, *args, **kw):
        if method == "get_object" and kw.get("Key", "").endswith(".h5"):
            gets.append((kw["Key"], kw.get("Range")))
        return await call_s3(self, method, *args, **kw)

    def spy_open(self, path, mode="rb", *args, **kw):
        if path.endswith(".h5") and "r" in mode:
            opens.append(path)
        return open_(self, path, mode, *args, **kw)
    monkeypatch.setattr(S3FileSystem, "_call_s3", spy_call)
    monkeypatch.setattr(S3FileSystem, "_open", spy_open)
    return gets, opens


def test_a_remote_hdf5_member_is_fetched_once_and_read_locally(s3, monkeypatch, tmp_path):
    """On an object store h5py's small reads cost a request each, twice over (layout, then rows): each
    HDF5 member on S3 (moto) is fetched whole, once, and merged from the copy (which is removed)."""
    url, parts = f"s3://{s3['bucket']}/compact-remote-hdf5", 8
    build_output(url, parts)
    before = snapshot(url)
    members = [p.split("/", 1)[1] for p in s3["fs"].ls(f"{url}/hdf5", refresh=True)]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))                 # where compaction's copies go
    gets, opens = spy_on_s3_reads(monkeypatch)
    compact(url, target_mb=1)
    assert len(members) == parts and sorted(gets) == [(key, None) for key in sorted(members)]  # once, whole
    assert not opens                                                        # never read remotely
    monkeypatch.undo()
    assert_same(before, snapshot(url))
    assert not os.listdir(tmp_path) and not [p for p in s3["fs"].find(url) if ".member-" in p]


def test_plan_merges_runs_of_small_segments_only():
    sizes = {"a": 10, "b": 10, "big": 100, "c": 10, "d": 50, "e": 45, "f": 5, "g": 1}
    assert plan(sizes, target=60) == [["a", "b"], ["c", "d"], ["e", "f", "g"]]
    assert plan({"a": 10}, target=60) == [] and plan({"a": 70, "b": 70}, target=60) == []


@pytest.mark.parametrize("point", ["compact.data@1", "compact.record@1", "compact.delete@1", "compact.publish@1",
                                   "compact.data@2", "compact.record@2", "fold.index", "fold.records"])
def test_compaction_killed_at_any_step_loses_and_duplicates_nothing(output, point):
    before = snapshot(output)
    killed = run_cli("compact", output, "--target-mb", "0.04", env_extra={"VIDFEAT_FAILPOINTS": point})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert_same(before, snapshot(output))
    ids = glob_ids(output)
    assert len(ids) == len(set(ids)) and set(ids) <= set(before["ids"])     # a glob never sees one twice
    assert verify(output)["ok"], verify(output)["problems"]
    finished = run_cli("compact", output, "--target-mb", "1")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_same(before, snapshot(output))
    segments = sorted(Ledger(output).load().segments)
    assert len(segments) == 1 and not verify(output)["leftovers"]
    for sub, ext in (("videos", "parquet"), ("clips", "parquet"), ("hdf5", "h5")):
        assert live_files(output, sub) == [f"{segments[0]}.{ext}"], sub        # leftovers collected


def test_a_reader_during_compaction_sees_every_video_exactly_once(output):
    before = snapshot(output)
    seen, errors, stop = [], [], threading.Event()

    def read_in_a_loop():
        while not stop.is_set():
            try:
                assert_same(before, snapshot(output))
                seen.append(1)
            except Exception as exc:                         # noqa: BLE001 - reported below
                errors.append(repr(exc))
                return

    reader = threading.Thread(target=read_in_a_loop)
    reader.start()
    for target_mb in ("0.04", "1"):                         # six merges of four parts, then one of all
        merge = subprocess.run([sys.executable, "-m", "pipeline", "compact", output, "--target-mb", target_mb],
                               capture_output=True, text=True, timeout=300)
        assert merge.returncode == 0, merge.stderr[-2000:]
    stop.set()
    reader.join(timeout=120)
    assert not errors, errors[:3]
    assert len(seen) >= 2


def test_a_compaction_between_a_readers_load_and_its_listing_is_noticed(output, monkeypatch):
    """The reader's ledger load says "the old parts"; before it lists videos/, a whole compaction runs."""
    before, original, fired = snapshot(output), Ledger.ls, []

    def ls(self, sub, detail=False):
        if sub in ("videos", "hdf5") and not fired:
            fired.append(sub)
            compact(output, target_mb=1)
        return original(self, sub, detail)

    monkeypatch.setattr(Ledger, "ls", ls)
    assert_same(before, snapshot(output))
    assert fired and len(Ledger(output).load().segments) == 1


def test_a_compaction_between_a_readers_listing_and_its_reads_is_noticed(output, monkeypatch):
    """The reader has listed the old files; a compaction deletes them before it opens them."""
    before, original, fired = snapshot(output), Ledger.committed_files, []

    def committed_files(self, sub, state=None):
        files = original(self, sub, state)
        if not fired:
            fired.append(sub)
            compact(output, target_mb=1)
        return files

    monkeypatch.setattr(Ledger, "committed_files", committed_files)
    assert_same(before, snapshot(output))
    assert fired


def test_a_group_written_with_another_schema_is_left_as_it_is(output):
    path = sorted(glob.glob(f"{output}/videos/*.parquet"))[3]
    table = pq.read_table(path)
    pq.write_table(table.append_column("added_later", pa.array([1.0] * table.num_rows)), path)
    before = snapshot(output)
    report = compact(output, target_mb=1)
    assert report.skipped == 1 and report.groups == 0
    assert_same(before, snapshot(output)) and verify(output)["ok"]


def test_a_second_writer_is_refused_while_the_first_holds_the_lease(output):
    ledger = Ledger(output)
    with WriterLease(ledger) as lease:                       # this process: alive, heartbeat fresh,
        ledger.claim(lease)                                  # and the newest claim is its own
        refused = run_cli("compact", output)
    assert refused.returncode == 2, refused.stderr
    assert "is being written by another run or compaction" in refused.stderr and str(os.getpid()) in refused.stderr
    assert run_cli("compact", output).returncode == 0      # released: the next one goes ahead


def test_the_lease_of_a_killed_writer_does_not_block_the_next(output):
    killed = run_cli("compact", output, "--target-mb", "0.04", env_extra={"VIDFEAT_FAILPOINTS": "compact.record@2"})
    assert killed.returncode == -9 and os.listdir(f"{output}/.writers")       # its lease is still there
    assert run_cli("compact", output, "--target-mb", "1").returncode == 0
    assert not [n for n in os.listdir(f"{output}/.writers") if n.endswith(".json")]


@pytest.mark.parametrize("point", ["compact.record@1", "compact.publish@1", "fold.records"])
def test_compaction_on_object_storage_killed_then_finished(s3, tmp_path, point):
    url = build_output_on_s3(s3, tmp_path, f"compact-{point.replace('@', '-').replace('.', '-')}", parts=6)
    before = snapshot(url)
    killed = run_cli("compact", url, "--target-mb", "0.02", env_extra={**s3["env"], "VIDFEAT_FAILPOINTS": point})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert_same(before, snapshot(url))
    assert run_cli("compact", url, "--target-mb", "1", env_extra=s3["env"]).returncode == 0
    assert_same(before, snapshot(url))
    assert len(Ledger(url).load().segments) == 1 and verify(url)["ok"] and not verify(url)["leftovers"]
