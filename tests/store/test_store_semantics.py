"""The commit protocol against stores' real semantics (issue #27): each interleaving a store, a clock or a
network can produce, reproduced — clocks set apart, an upload abandoned at its deadline that lands later,
an NFS link answered twice, a fold between two listings."""
from __future__ import annotations

import errno
import os
import threading
import time

import pytest
from fsspec.core import url_to_fs

from pipeline import attempt
from pipeline.storage import Guarded, StorageError
from pipeline.store.compaction import compact
from pipeline.store import ledger as ledger_mod
from pipeline.store import publish
from pipeline.store.ledger import Ledger
from pipeline.store.publish import publish_bytes

from test_fencing import commit, stage


class SteppedClock:
    """time.time() that a test sets: hosts' clocks differ, and an NTP step moves one back."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_replay_orders_by_epoch_and_sequence_not_by_the_writers_clock(tmp_path, monkeypatch):
    """A video retired (a compaction's `retired`) and then extracted again by the same writer, whose
    clock stepped back between the two records: the re-extraction comes last, the video is done once."""
    out = str(tmp_path / "out")
    clock = SteppedClock(1000.0)
    monkeypatch.setattr(ledger_mod.time, "time", clock)
    first = Ledger(out)
    first.claim()
    commit(first, "part-a-00000", ["x", "y"])
    first.fold()
    writer = Ledger(out)
    writer.claim()
    clock.now = 2000.0
    stage(writer, "part-c-00000", ["y"])
    writer.record_compaction("compact-c-00000", ["part-c-00000"], ["part-a-00000"], retired=["x"])
    clock.now = 1500.0                                     # the clock stepped back 500 s
    commit(writer, "part-b-00000", ["x"])                  # x extracted again
    for state in (Ledger(out).load(), Ledger(out).rebuild()):
        assert state.done == {"x", "y"} and state.segments == {"part-b-00000", "part-c-00000"}


def test_records_carry_their_writers_sequence(tmp_path):
    out = str(tmp_path / "out")
    writer = Ledger(out)
    writer.claim()
    for i in range(3):
        commit(writer, f"part-r-{i:05d}", [f"v{i}"])
    import json

    seqs = [json.load(open(os.path.join(out, "ledger", f"part-r-{i:05d}.json")))["seq"] for i in range(3)]
    assert seqs == [0, 1, 2]


def test_an_index_name_tried_once_is_never_used_again(tmp_path, monkeypatch):
    """A fold whose index upload was abandoned at its deadline (it may still land); the next fold takes
    a new name, so the late upload, landing over a store that ignores conditional writes, cannot replace
    the newer index."""
    out = str(tmp_path / "out")
    writer = Ledger(out)
    writer.claim()
    abandoned = []

    def abandon_the_index(data, url, exclusive=False):
        if "/ledger/index/" in url and not abandoned:
            abandoned.append((data, url))
            raise StorageError(errno.EIO, f"storage: upload to {url} failed: no answer within 60 s")
        return publish_bytes(data, url, exclusive)
    monkeypatch.setattr(ledger_mod, "publish_bytes", abandon_the_index)
    commit(writer, "part-r-00000", ["a"])
    with pytest.raises(StorageError):
        writer.fold(writer.load())
    commit(writer, "part-r-00001", ["b"])
    writer.fold()
    late_data, late_url = abandoned[0]
    assert late_url not in {Ledger(out).url("ledger", "index", os.path.basename(p)) for p in writer.index_files()}
    publish_bytes(late_data, late_url)                     # it lands now, over whatever is there
    assert Ledger(out).load().done == {"a", "b"}


def test_an_exclusive_link_answered_twice_is_our_own(tmp_path, monkeypatch):
    """NFSv3: the LINK is retransmitted after a lost reply and answers EEXIST for the link it made; the
    bytes there are ours, so the publish succeeded. Another writer's bytes still refuse."""
    real_link = os.link

    def link_then_lose_the_reply(src, dst):
        real_link(src, dst)
        raise FileExistsError(errno.EEXIST, "File exists", dst)
    monkeypatch.setattr(publish.os, "link", link_then_lose_the_reply)
    target = str(tmp_path / "claims" / "00000001.json")
    publish_bytes(b'{"epoch": 1, "lease": "mine"}', target, exclusive=True)
    assert open(target, "rb").read() == b'{"epoch": 1, "lease": "mine"}'
    with pytest.raises(FileExistsError):
        publish_bytes(b'{"epoch": 1, "lease": "theirs"}', target, exclusive=True)
    assert open(target, "rb").read() == b'{"epoch": 1, "lease": "mine"}'
    assert os.listdir(tmp_path / "claims") == ["00000001.json"]      # no temporary left


def test_a_rebuild_sees_a_record_that_a_fold_archives_between_its_listings(tmp_path):
    out = str(tmp_path / "out")
    writer = Ledger(out)
    writer.claim()
    commit(writer, "part-r-00000", ["a"])
    commit(writer, "part-r-00001", ["b"])                  # pending in ledger/, not yet folded
    reader = Ledger(out)
    listed, real = [], reader._json_files

    def fold_after_the_first_listing(sub):
        found = real(sub)
        listed.append(sub)
        if len(listed) == 1:
            writer.fold()                                  # archives both records into ledger/records/
        return found
    reader._json_files = fold_after_the_first_listing
    assert reader.rebuild().done == {"a", "b"}


def test_a_listing_is_never_served_from_a_cache(s3):
    """On S3: an abandoned listing call lands its old answer in s3fs's listings cache just after the
    ledger cleared it; the ledger's file system keeps no listings cache, so it lists the store."""
    ledger = Ledger(f"s3://{s3['bucket']}/listing")
    writer = Ledger(ledger.out)
    writer.claim()
    commit(writer, "part-r-00000", ["a"])
    fs, clear = ledger.fs.fs, ledger.fs.fs.invalidate_cache

    def clear_then_a_late_answer_lands(path=None):
        clear(path)
        fs.dircache[ledger.path("ledger")] = [{"name": ledger.path("ledger", "stale.json"), "type": "file",
                                               "size": 0}]
    fs.invalidate_cache = clear_then_a_late_answer_lands
    assert [p.rsplit("/", 1)[-1] for p in ledger.ls("ledger")] == ["claims", "index", "part-r-00000.json"]
    assert ledger.load().done == {"a"}


# --- calls abandoned at their deadline (issue #27 item 3, point 4) -------------------------------------------

class SlowLink:
    """An upload over a slow link: it moves one piece each time the uploader's deadline passes, so it
    overruns any deadline in total while never stalling for one."""

    def __init__(self, pieces: int):
        self.pieces, self.calls = pieces, 0
        self.step, self.stepped = threading.Semaphore(0), threading.Semaphore(0)

    def put_file(self, local, path, callback):
        self.calls += 1
        if self.calls > 1:                                 # a cut, and a copy sent again: fail at once
            raise RuntimeError(f"upload {self.calls} of {path} while the first is still under way")
        for _ in range(self.pieces):
            self.step.acquire()
            callback.relative_update(1)
            self.stepped.release()

    def a_deadline_passes(self, done: threading.Event, seconds: float) -> bool:
        """attempt._wait as the clock would have it: a whole deadline, during which one piece moves."""
        self.step.release()
        while not done.is_set():
            if self.stepped.acquire(timeout=0.05):
                return done.is_set()
        return True


@pytest.mark.timeout(60)
def test_a_slow_upload_that_keeps_moving_is_never_cut_nor_run_twice(tmp_path, monkeypatch):
    link = SlowLink(pieces=12)
    monkeypatch.setattr(attempt, "_wait", link.a_deadline_passes)
    local = tmp_path / "merged.h5"
    local.write_bytes(b"x" * 1024)
    Guarded(link).put_file(str(local), "bucket/hdf5/.compact-part.h5")
    assert link.calls == 1                                 # one upload, through 12 deadlines' worth


@pytest.mark.timeout(300)
def test_an_upload_landing_after_compaction_deleted_its_file_is_harmless(s3, monkeypatch):
    """A part's upload is abandoned at its deadline and retried; the part is committed, then compacted away;
    then the abandoned upload lands. A glob over the data folders still sees every video once."""
    monkeypatch.setenv("VIDFEAT_STORAGE_DEADLINE_S", "1")
    out = f"s3://{s3['bucket']}/late-{time.time_ns()}"
    fs = url_to_fs(out)[0]                                 # the s3fs instance publishing uses (cached)
    held, landed, release, real_put = threading.Event(), threading.Event(), threading.Event(), fs.put_file

    def first_upload_delayed(local, path, **kwargs):
        if "part-r-00000.parquet" in path and "/videos/" in path and not held.is_set():
            held.set()
            data = open(local, "rb").read()                # the local file goes once the retry is done
            release.wait()
            fs.pipe_file(path, data)                       # lands now, where this try was sending it
            landed.set()
            return None
        return real_put(local, path, **kwargs)
    monkeypatch.setattr(fs, "put_file", first_upload_delayed)
    writer = Ledger(out)
    writer.claim()
    commit(writer, "part-r-00000", ["a", "b"])
    commit(writer, "part-r-00001", ["c"])
    assert held.is_set()
    compact(out, target_mb=1)
    release.set()
    assert landed.wait(60)
    for sub in ("videos", "clips"):
        assert sorted(globbed_ids(fs, writer.path(sub))) == ["a", "b", "c"], sub
    assert Ledger(out).load().done == {"a", "b", "c"}


def globbed_ids(fs, folder: str) -> list[str]:
    """The video ids a glob over `folder`'s Parquet files reads (hidden names excepted, as globs do)."""
    import pyarrow.parquet as pq

    ids = []
    for path in fs.glob(f"{folder}/*.parquet"):
        with fs.open(path, "rb") as fh:
            ids += pq.read_table(fh, columns=["video_id"]).column("video_id").to_pylist()
    return ids


# --- h5py and fsspec's event loop ---------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_reading_remote_hdf5_never_calls_fsspec_under_h5pys_lock(s3, monkeypatch):
    """Garbage collection on fsspec's event-loop thread may free an h5py object, which takes h5py's global
    lock: while h5py holds that lock to read through a file object of fsspec's, the two wait for each
    other for ever. Here every S3 request first collects h5py garbage on the loop, so a reader that lets
    h5py read through fsspec hangs (and this test times out)."""
    import gc

    import h5py
    import s3fs

    from pipeline.read.features import load_clips, load_videos
    from pipeline.read.verify import verify

    out = f"s3://{s3['bucket']}/h5-{time.time_ns()}"
    writer = Ledger(out)
    writer.claim()
    commit(writer, "part-r-00000", ["a", "b"])
    real_call = s3fs.S3FileSystem._call_s3

    async def collect_h5py_garbage_first(self, *args, **kwargs):
        cycle = [h5py.h5t.py_create("f4")]                 # an h5py object in a reference cycle
        cycle.append(cycle)
        del cycle
        gc.collect(0)                                      # freeing it takes h5py's lock, on the loop
        return await real_call(self, *args, **kwargs)
    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", collect_h5py_garbage_first)
    assert load_videos(out, source="hdf5").ids == ["a", "b"]
    assert load_clips(out, source="hdf5", fields=("embedding",)).embedding.shape == (2, 8)
    assert verify(out)["ok"]
