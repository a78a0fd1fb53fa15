"""Storage faults (issue #20): every ledger, lease and publish call has a deadline, a bounded retry and
a clear failure; a heartbeat survives an outage. Faults are real: moto's S3 behind a loopback proxy that
refuses or black-holes connections (tests/faultproxy.py)."""
from __future__ import annotations

import threading
import time

import fsspec
import pytest

from pipeline.store import lease as lease_mod
from pipeline import storage
from pipeline.store.lease import WriterLease
from pipeline.store.ledger import Ledger
from pipeline.storage import StorageError

from faultproxy import FaultProxy
from test_fencing import commit


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setenv("VIDFEAT_STORAGE_DEADLINE_S", "2")
    monkeypatch.setenv("VIDFEAT_STORAGE_ATTEMPTS", "2")
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)       # no backoff wait in tests


def test_a_call_past_its_deadline_is_retried_then_fails_naming_it(quick):
    calls = []

    def hang(path):
        calls.append(path)
        threading.Event().wait(30)

    with pytest.raises(StorageError, match="ls s3://b/out failed after 2 attempt.*no answer within 2 s"):
        storage.call(hang, "s3://b/out", what="ls s3://b/out")
    assert calls == ["s3://b/out"] * 2


def test_final_answers_are_not_retried_and_transient_ones_are(quick):
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        storage.call(missing, what="x")
    assert len(calls) == 1
    flaky = iter([ConnectionResetError("reset"), "ok"])

    def once_then_ok():
        item = next(flaky)
        if isinstance(item, Exception):
            raise item
        return item

    assert storage.call(once_then_ok, what="y") == "ok"


@pytest.fixture
def proxied(s3):
    proxy = FaultProxy(int(s3["env"]["FSSPEC_S3_ENDPOINT_URL"].rsplit(":", 1)[1]))
    conf = fsspec.config.conf["s3"]
    saved = conf["endpoint_url"]
    conf["endpoint_url"] = proxy.url
    try:
        yield proxy
    finally:
        conf["endpoint_url"] = saved
        proxy.close()


def test_a_black_holed_or_refused_store_fails_clearly_and_recovers(proxied, quick, tmp_path):
    out = f"s3://vidfeat-test/faults-{time.time_ns()}"
    writer = Ledger(out)
    writer.claim()
    commit(writer, "part-r-00000", ["a", "b"])
    for mode in ("blackhole", "refuse"):
        proxied.mode = mode
        with pytest.raises(StorageError, match="failed after 2 attempt"):
            Ledger(out).load()
        with pytest.raises(StorageError):
            writer.record("part-r-00001", ["c"], [])
    proxied.mode = "pass"
    assert Ledger(out).load().done == {"a", "b"}
    commit(writer, "part-r-00002", ["d"])
    assert Ledger(out).load().done == {"a", "b", "d"}


def test_the_heartbeat_survives_an_outage_and_beats_again(proxied, quick, monkeypatch):
    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 0.2)
    ledger = Ledger(f"s3://vidfeat-test/lease-{time.time_ns()}")
    with WriterLease(ledger) as held:
        proxied.mode = "blackhole"
        before = held.beaten
        time.sleep(6)                                             # several beats fail meanwhile
        assert held.beaten == before and held.lost is None
        proxied.mode = "pass"
        assert wait(lambda: held.beaten > before, 30), "the heartbeat did not come back"
        held.check()


def wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.1)
    return predicate()


def test_a_bucket_that_does_not_exist_is_a_usage_error(s3, corpus):
    from conftest import run_cli

    result = run_cli("compact", "s3://no-such-bucket-here/out", env_extra=s3["env"], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    result = run_cli("extract", corpus["dir"], "--out", "s3://no-such-bucket-here/out", "--preset", "tiny",
                     "--checkpoint", "random", env_extra=s3["env"], timeout=120)
    assert result.returncode == 2 and "no-such-bucket-here" in result.stderr, result.stderr[-2000:]
