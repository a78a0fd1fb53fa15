"""The commit protocol under damage and stale writers (DESIGN.md §5): no deletion without certainty,
damaged records named, a writer that lost its lease cannot commit, a heartbeat never revives a lease."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from pipeline.store import lease as lease_mod
from pipeline.store.commit import write_part
from pipeline.errors import DamagedOutputError, LeaseLostError
from pipeline.read.parts import read_table
from pipeline.store.lease import WriterLease
from pipeline.store.ledger import Ledger
from pipeline.read.verify import verify

from conftest import run_cli
from partkit import PROV


def commit(ledger: Ledger, part: str, ids: list[str]) -> None:
    """Write and record one part holding `ids` (as a run does: files first, record last)."""
    stage(ledger, part, ids)
    ledger.record(part, ids, [])


def stage(ledger: Ledger, part: str, ids: list[str]) -> None:
    """Publish a part's data files without its record (a commit under way)."""
    import numpy as np

    rng = np.random.default_rng(len(part))
    videos, clips = [], {}
    for vid in ids:
        emb, logits = rng.normal(size=8).astype(np.float32), rng.normal(size=3).astype(np.float32)
        clips[vid] = [{"video_id": vid, "clip_index": 0, "start_s": 0.0, "end_s": 1.0, "valid_frames": 4,
                       "frame_indices": [0, 1, 2, 3], "embedding": emb, "logits": logits}]
        videos.append({"video_id": vid, "uri": f"/{vid}", "num_clips": 1, "duration_s": 1.0, "embedding": emb,
                       "logits": logits, "probs": np.full(3, 1 / 3, np.float32), **PROV})
    write_part(ledger, part, videos, clips, [], PROV)


def data_files(out: str) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(out) for f in files
            if os.path.basename(d) in ("videos", "clips", "hdf5", "failures")}


def committed(tmp_path, parts: int = 3) -> tuple[str, set[str]]:
    out = str(tmp_path / "out")
    writer = Ledger(out)
    writer.claim()
    for p in range(parts):
        commit(writer, f"part-r-{p:05d}", [f"v{p}-{i}" for i in range(2)])
    writer.fold()
    return out, {f"v{p}-{i}" for p in range(parts) for i in range(2)}


# --- no deletion without certainty ----------------------------------------------------------------------

def test_a_missing_index_is_rebuilt_and_no_committed_file_is_deleted(tmp_path):
    out, ids = committed(tmp_path)
    files = data_files(out)
    shutil.rmtree(os.path.join(out, "ledger", "index"))
    assert Ledger(out).load().done == ids                         # a reader rebuilds in memory
    assert verify(out)["ok"] and verify(out)["videos"] == len(ids)
    writer = Ledger(out)
    assert writer.claim().done == ids
    assert writer.collect_garbage(writer.load()) == [] and data_files(out) == files
    assert os.listdir(os.path.join(out, "ledger", "index"))      # the writer published it again


@pytest.mark.parametrize("content", [b'{"part": "part-r-00009", "done": ["x"', b'{"hello": 1}', b"", b"[]",
                                     b'{"part": "part-r-00009", "committed_at": 1, "done": "v0-0"}'])
@pytest.mark.parametrize("where", ["ledger", "ledger/records"])
def test_a_damaged_record_stops_every_command_naming_it_and_deletes_nothing(tmp_path, content, where):
    out, _ = committed(tmp_path)
    stage(Ledger(out), "part-s-00000", ["orphan"])               # uncommitted files a writer would delete
    files = data_files(out)
    bad = os.path.join(out, where, "part-r-00009.json")
    with open(bad, "wb") as fh:
        fh.write(content)
    if where == "ledger/records":                                 # archived records are read on a rebuild
        shutil.rmtree(os.path.join(out, "ledger", "index"))
    with pytest.raises(DamagedOutputError, match="part-r-00009.json"):
        Ledger(out).load()
    with pytest.raises(DamagedOutputError, match="part-r-00009.json"):
        Ledger(out).claim()
    assert data_files(out) == files
    for command in ("status", "verify", "compact") if content.startswith(b'{"part"') else ():
        result = run_cli(command, out, timeout=120)
        assert result.returncode == 2, (command, result.stdout, result.stderr[-2000:])
        assert "part-r-00009.json" in result.stderr and "Traceback" not in result.stderr
    assert data_files(out) == files


# --- fencing ----------------------------------------------------------------------------------------------

def test_a_writer_taken_over_cannot_commit_and_its_files_go(tmp_path):
    out, ids = committed(tmp_path)
    paused = Ledger(out)
    paused.claim()
    stage(paused, "part-p-00000", ["late"])                      # then the VM is suspended
    fresh = Ledger(out)
    state = fresh.claim()                                         # the lease went stale: taken over
    removed = fresh.collect_garbage(state)
    assert any("part-p-00000" in p for p in removed)
    with pytest.raises(LeaseLostError, match="took over"):
        paused.record("part-p-00000", ["late"], [])
    with pytest.raises(LeaseLostError):
        paused.fold()
    commit(fresh, "part-f-00000", ["new"])
    assert Ledger(out).load().done == ids | {"new"} and verify(out)["ok"]


@pytest.mark.parametrize("what", ["record", "index", "data file"])
def test_a_writer_whose_staged_file_a_new_writer_swept_stops_as_taken_over(tmp_path, monkeypatch, what):
    """Paused between staging a publish and linking it (its claim, a record, a part's file): a newer
    writer claims and sweeps the temporary away (sweep.py). The paused one stops as taken over
    (LeaseLostError: exit 75), not with an I/O error over a file it never saw vanish."""
    import pipeline.store.publish as publish

    out, ids = committed(tmp_path)
    paused = Ledger(out)
    paused.claim()
    real_link = os.link

    def link_after_takeover(tmp, path):
        monkeypatch.setattr(publish.os, "link", real_link)
        fresh = Ledger(out)
        fresh.collect_garbage(fresh.claim())                     # sweeps ledger/ and data temporaries
        return real_link(tmp, path)

    def act():
        if what == "record":
            paused.record("part-p-00001", [], [])
        elif what == "index":
            paused.fold()                                         # publishes the next index of the ledger
        else:
            stage(paused, "part-p-00001", ["later"])
    if what == "index":
        commit(paused, "part-p-00000", ["late"])                  # a record to fold, before the pause
        ids = ids | {"late"}
    if what == "data file":
        monkeypatch.setattr(publish.os, "replace", _replace_after(monkeypatch, publish, out))
    else:
        monkeypatch.setattr(publish.os, "link", link_after_takeover)
        monkeypatch.setattr(paused, "check_fence", _fence_checked_once(paused))
    with pytest.raises(LeaseLostError, match="took over"):
        act()
    assert Ledger(out).load().done == ids and verify(out)["ok"]


def _fence_checked_once(ledger: Ledger):
    """`check_fence` that passes its first call (made before the takeover), then checks for real."""
    real, calls = ledger.check_fence, []

    def check():
        calls.append(1)
        return None if len(calls) == 1 else real()
    return check


def _replace_after(monkeypatch, publish, out: str):
    """os.replace that lets a newer writer claim and sweep before the first data file is moved in place."""
    real = os.replace

    def replace(tmp, path):
        monkeypatch.setattr(publish.os, "replace", real)
        fresh = Ledger(out)
        fresh.collect_garbage(fresh.claim())
        return real(tmp, path)
    return replace


def test_a_record_published_after_the_takeover_does_not_count(tmp_path, monkeypatch):
    """The moment between a writer's fence check and its publish: the epoch rule ignores the record."""
    out, ids = committed(tmp_path)
    paused = Ledger(out)
    paused.claim()
    stage(paused, "part-p-00000", ["late"])
    fresh = Ledger(out)
    fresh.collect_garbage(fresh.claim())
    monkeypatch.setattr(paused, "check_fence", lambda: None)     # it checked just before the takeover
    paused.record("part-p-00000", ["late"], [])
    state = Ledger(out).load()
    assert state.done == ids and state.fenced == ("part-p-00000",)
    assert verify(out)["ok"]
    assert fresh.fold().done == ids
    assert os.listdir(os.path.join(out, "ledger", "fenced")) == ["part-p-00000.json"]
    assert "late" not in read_table(out, "videos", ["video_id"]).column("video_id").to_pylist()


def test_a_paused_compaction_deletes_nothing_after_a_takeover(tmp_path, monkeypatch):
    from pipeline.store import compaction as compact_mod

    out, ids = committed(tmp_path, parts=4)
    files = data_files(out)
    paused = Ledger(out)
    real_record = paused.record_compaction

    def record_then_pause(name, segments, replaces, retired=()):
        real_record(name, segments, replaces, retired)
        Ledger(out).claim()                                      # another writer takes over meanwhile

    monkeypatch.setattr(paused, "record_compaction", record_then_pause)
    with pytest.raises(LeaseLostError):
        compact_mod.compact(paused, target_mb=1)
    assert files <= data_files(out)                              # no member file deleted
    assert Ledger(out).load().done == ids and verify(out)["ok"]


def test_two_writers_cannot_claim_the_same_epoch(tmp_path, monkeypatch):
    out, ids = committed(tmp_path)
    first, second = Ledger(out), Ledger(out)
    epoch = second._next_epoch()                                  # both look before either claims
    first.claim()
    monkeypatch.setattr(second, "_next_epoch", lambda: epoch)
    with pytest.raises(LeaseLostError, match="same moment"):
        second.claim()
    assert Ledger(out).load().done == ids


# --- the lease --------------------------------------------------------------------------------------------

def test_a_heartbeat_never_revives_a_lease_another_writer_took(tmp_path):
    ledger = Ledger(str(tmp_path / "out"))
    with WriterLease(ledger) as held:
        os.remove(os.path.join(ledger.out, ".writers", f"{held.me['id']}.json"))   # a takeover removed it
        held._beat_once()
        assert not os.path.exists(os.path.join(ledger.out, ".writers", f"{held.me['id']}.json"))
        with pytest.raises(LeaseLostError, match="removed it as stale"):
            held.check()


def test_a_heartbeat_survives_any_error_and_an_outage_alone_never_loses_the_lease(tmp_path, monkeypatch):
    ledger = Ledger(str(tmp_path / "out"))
    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 0.05)
    with WriterLease(ledger) as held:
        calls = []

        def outage(*_args, **_kw):
            calls.append(1)
            raise RuntimeError("botocore.exceptions.EndpointConnectionError: could not connect")

        monkeypatch.setattr(held, "_publish", outage)
        assert wait(lambda: len(calls) >= 3)                      # the thread goes on after each error
        held.beaten -= lease_mod.STALE_S + 1                      # however long it lasts (storage.py's patience
        held.check()                                              # ends the command, not the lease)


def wait(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)
    return predicate()


def test_the_fingerprint_is_pinned_by_the_first_commit_not_before(tmp_path):
    out = str(tmp_path / "out")
    writer = Ledger(out)
    writer.claim()
    writer.check_fingerprint("a")
    assert not os.path.exists(os.path.join(out, "run.json"))
    writer.pin("a", {"model": 1})
    assert json.load(open(os.path.join(out, "run.json")))["fingerprint"] == "a"


@pytest.mark.parametrize("victim", ["videos/part-r-00001.parquet", "hdf5/part-r-00001.h5"])
def test_compacting_a_truncated_data_file_is_exit_2_naming_it_and_deletes_nothing(tmp_path, victim):
    out, ids = committed(tmp_path)
    with open(os.path.join(out, victim), "r+b") as fh:
        fh.truncate(64)
    files = data_files(out)
    result = run_cli("compact", out, timeout=120)
    assert result.returncode == 2 and victim.split("/")[1] in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and data_files(out) == files
    assert Ledger(out).load().done == ids
