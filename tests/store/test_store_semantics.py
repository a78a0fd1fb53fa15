"""The commit protocol against stores' real semantics (issue #27): each interleaving a store, a clock or a
network can produce, reproduced — clocks set apart, an upload abandoned at its deadline that lands later,
an NFS link answered twice, a fold between two listings."""
from __future__ import annotations

import errno
import os

import pytest

from pipeline.storage import StorageError
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
