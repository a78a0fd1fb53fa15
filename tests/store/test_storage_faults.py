"""Storage faults (issues #20, #27): every ledger, lease and publish call has a deadline per try and rides
out an outage — refused, black-holed, `503 Slow Down` — for the patience (VIDFEAT_STORAGE_PATIENCE_S),
then fails with one line; a run outlives an outage shorter than that, its lease too. Faults are real:
moto's S3 behind a loopback proxy (tests/faultproxy.py). The retry loop itself is tested on an injected
clock: no real waiting."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time

import fsspec
import pytest

from pipeline import storage
from pipeline.store import lease as lease_mod
from pipeline.store.lease import WriterLease
from pipeline.store.ledger import Ledger
from pipeline.storage import DeadlineExceeded, Outage, StorageError

from conftest import ray_env
from faultproxy import FaultProxy
from test_fencing import commit

PATIENCE_S, DEADLINE_S = 8.0, 2.0             # what the runs below are given (env), so that they take seconds
OUTAGE_S, RIDING_S = 12.0, 20.0               # an outage longer than the 3 tries of before (~9 s at 2 s a try)
EXIT_SLACK_S = 3.0                           # from giving up to the process's end: unwinding, Ray's disconnect


@pytest.fixture(autouse=True)
def fresh_outage(monkeypatch):
    """Each test starts with no outage on record (the record is per process)."""
    monkeypatch.setattr(storage, "OUTAGE", Outage())


# --- the retry loop, on an injected clock -----------------------------------------------------------------

class FakeTime:
    """A clock that only the calls under test move: each try takes `try_s`, each sleep what it asks."""

    def __init__(self):
        self.now, self.slept = 1000.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds


def tries(fake: FakeTime, outcomes, try_s: float = 0.0):
    """An attempt that takes `try_s` of fake time, then raises or returns the next of `outcomes` (the
    last one over and over)."""
    made = []

    def attempt():
        made.append(fake.now)
        fake.now += try_s
        item = outcomes[min(len(made), len(outcomes)) - 1]
        if isinstance(item, BaseException):
            raise item
        return item

    return attempt, made


def patient(fake: FakeTime, attempt, patience: float = 60.0, outage: Outage | None = None, what: str = "ls s3://b/x"):
    return storage.retry(attempt, what, patience=patience, clock=fake.clock, sleep=fake.sleep,
                         outage=outage or Outage(), jitter=lambda: 1.0)


def test_the_backoff_grows_is_capped_and_stops_at_the_patience():
    fake = FakeTime()
    attempt, made = tries(fake, [ConnectionRefusedError("refused")])
    with pytest.raises(StorageError) as raised:
        patient(fake, attempt, patience=100.0)
    assert fake.slept[:4] == [0.5, 1.0, 2.0, 4.0]                       # exponential ...
    assert max(fake.slept) == storage.BACKOFF_MAX_S                     # ... capped
    assert made[-1] == pytest.approx(made[0] + 100.0)                  # the last try at the patience, not after
    assert fake.now == pytest.approx(made[0] + 100.0)                  # and not one sleep more
    message = str(raised.value)
    assert "\n" not in message
    for part in ("ls s3://b/x", "100 s", f"{len(made)} tries", "ConnectionRefusedError: refused"):
        assert part in message, message


def test_jitter_spreads_each_wait_between_half_and_all_of_it():
    fake = FakeTime()
    attempt, _ = tries(fake, [ConnectionResetError("reset")] * 4 + ["ok"])
    storage.retry(attempt, "x", patience=60.0, clock=fake.clock, sleep=fake.sleep, outage=Outage(), jitter=lambda: 0.0)
    assert fake.slept == [0.25, 0.5, 1.0, 2.0]


def test_a_try_that_fails_after_the_patience_still_had_its_whole_deadline():
    """Black-holed: every try takes its deadline. The last one starts before the patience is spent and
    is waited for: the failure comes at most patience + one deadline after the first try began."""
    fake = FakeTime()
    attempt, made = tries(fake, [DeadlineExceeded("no answer within 2 s")], try_s=2.0)
    start = fake.now
    with pytest.raises(StorageError, match="no answer within 2 s"):
        patient(fake, attempt, patience=8.0)
    assert made[-1] <= start + 8.0 and fake.now <= start + 8.0 + 2.0


def test_final_answers_are_raised_at_once_even_during_an_outage():
    for final in (FileNotFoundError("gone"), FileExistsError("taken"), PermissionError("denied")):
        fake = FakeTime()
        attempt, made = tries(fake, [ConnectionRefusedError("refused"), final])
        with pytest.raises(type(final)):
            patient(fake, attempt)
        assert len(made) == 2 and fake.slept == [0.5]
    fake = FakeTime()
    attempt, made = tries(fake, [ValueError("not a storage failure")])
    with pytest.raises(StorageError, match="ValueError"):
        patient(fake, attempt)
    assert len(made) == 1 and not fake.slept


def test_a_store_s_own_not_found_is_file_not_found_at_once():
    """Azure's ResourceNotFoundError (adlfs lets it through from a read of a blob deleted meanwhile) and
    an HTTP 404: FileNotFoundError at the first try, which the readers answer by reading again from a
    fresh ledger state (read/parts.py), not an I/O error."""
    class ResourceNotFoundError(Exception):
        status_code = 404

    class HTTPError(Exception):
        status = 404

    for error in (ResourceNotFoundError("The specified blob does not exist."), HTTPError("gone")):
        fake = FakeTime()
        attempt, made = tries(fake, [error])
        with pytest.raises(FileNotFoundError, match="blob does not exist|gone"):
            patient(fake, attempt)
        assert len(made) == 1 and not fake.slept


def test_a_success_after_failures_returns_and_ends_the_outage():
    fake, outage = FakeTime(), Outage()
    attempt, made = tries(fake, [ConnectionRefusedError("refused")] * 3 + ["listing"])
    assert patient(fake, attempt, outage=outage) == "listing"
    assert len(made) == 4 and outage.since is None


def test_server_errors_and_throttling_are_transient_as_s3fs_raises_them():
    import errno

    from s3fs.errors import translate_boto_error
    from botocore.exceptions import ClientError

    for code, status in (("SlowDown", 503), ("ServiceUnavailable", 503), ("InternalError", 500), ("503", 503),
                         ("500", 500)):
        exc = translate_boto_error(ClientError({"Error": {"Code": code, "Message": "m"},
                                                "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"))
        assert storage.transient(exc), (code, exc)
    assert not storage.transient(OSError(errno.EINVAL, "bad request"))
    assert not storage.transient(PermissionError("denied"))


def test_the_patience_is_the_outage_s_not_each_call_s():
    """Calls that meet an outage already as old as the patience get one try each: a command that gives
    up does not wait again while it ends."""
    fake, outage = FakeTime(), Outage()
    first, _ = tries(fake, [ConnectionRefusedError("refused")])
    with pytest.raises(StorageError):
        patient(fake, first, patience=10.0, outage=outage)
    assert outage.past(10.0, fake.now)
    second, made = tries(fake, [ConnectionRefusedError("refused")])
    slept = len(fake.slept)
    with pytest.raises(StorageError):
        patient(fake, second, patience=10.0, outage=outage)
    assert len(made) == 1 and len(fake.slept) == slept
    third, _ = tries(fake, ["back"])
    assert patient(fake, third, patience=10.0, outage=outage) == "back"
    assert not outage.past(10.0, fake.now)


def test_each_wait_is_logged_once_per_call(caplog):
    fake = FakeTime()
    attempt, made = tries(fake, [ConnectionRefusedError("refused")] * 6 + ["ok"])
    with caplog.at_level("INFO", logger="pipeline.storage"):
        patient(fake, attempt, patience=600.0, what="ls s3://b/out/ledger/claims")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["storage: ls s3://b/out/ledger/claims failing (ConnectionRefusedError: refused); "
                        "retrying for up to 600 s"]


def test_nothing_is_spent_when_nothing_fails():
    """No sleep, no clock beyond one reading, no log, when the first try succeeds."""
    readings = []
    outage = Outage()

    def clock():
        readings.append(1)
        return 0.0

    assert storage.retry(lambda: 7, "x", clock=clock, sleep=pytest.fail, outage=outage) == 7
    assert len(readings) == 1 and outage.since is None


def test_a_real_call_past_its_deadline_is_abandoned_and_tried_again(monkeypatch):
    monkeypatch.setenv("VIDFEAT_STORAGE_DEADLINE_S", "0.2")
    monkeypatch.setenv("VIDFEAT_STORAGE_PATIENCE_S", "0.5")
    calls = []

    def hang(path):
        calls.append(path)
        threading.Event().wait(30)

    with pytest.raises(StorageError, match="ls s3://b/out failed.*no answer within 0.2 s"):
        storage.call(hang, "s3://b/out", what="ls s3://b/out")
    assert len(calls) >= 2 and set(calls) == {"s3://b/out"}


# --- real faults: moto's S3 behind the proxy ---------------------------------------------------------------

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


@pytest.fixture
def quick(monkeypatch):
    for key, value in {"VIDFEAT_STORAGE_PATIENCE_S": "3", "VIDFEAT_STORAGE_DEADLINE_S": "1"}.items():
        monkeypatch.setenv(key, value)


def test_an_outage_past_the_patience_fails_clearly_and_the_store_is_used_again_after(proxied, quick):
    out = f"s3://vidfeat-test/faults-{time.time_ns()}"
    writer = Ledger(out)
    writer.claim()
    commit(writer, "part-r-00000", ["a", "b"])
    for mode in ("blackhole", "refuse", "slowdown"):
        proxied.mode = mode
        with pytest.raises(StorageError, match="failed: still failing after [0-9] s .*patience 3 s"):
            Ledger(out).load()
        with pytest.raises(StorageError):
            writer.record("part-r-00001", ["c"], [])
        proxied.mode = "pass"
        assert Ledger(out).load().done == {"a", "b"}
    commit(writer, "part-r-00002", ["d"])
    assert Ledger(out).load().done == {"a", "b", "d"}


@pytest.mark.parametrize("mode", ["blackhole", "refuse", "slowdown"])
def test_a_call_rides_out_an_outage_shorter_than_the_patience(proxied, monkeypatch, mode):
    monkeypatch.setenv("VIDFEAT_STORAGE_PATIENCE_S", "20")
    monkeypatch.setenv("VIDFEAT_STORAGE_DEADLINE_S", "1")
    out = f"s3://vidfeat-test/ride-{mode}-{time.time_ns()}"
    writer = Ledger(out)
    writer.claim()
    proxied.mode = mode
    threading.Timer(3.0, lambda: setattr(proxied, "mode", "pass")).start()
    commit(writer, "part-r-00000", ["a"])                          # waits, then goes through
    assert Ledger(out).load().done == {"a"}


def test_a_bucket_probe_during_an_outage_waits_instead_of_calling_it_missing(proxied, quick):
    proxied.mode = "refuse"
    threading.Timer(1.5, lambda: setattr(proxied, "mode", "pass")).start()
    Ledger("s3://vidfeat-test/probe").check_reachable()           # no "bucket does not exist"


def test_the_heartbeat_and_the_lease_survive_an_outage(proxied, quick, monkeypatch):
    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 0.2)
    ledger = Ledger(f"s3://vidfeat-test/lease-{time.time_ns()}")
    with WriterLease(ledger) as held:
        proxied.mode = "blackhole"
        before = held.beaten
        time.sleep(6)                                             # past the patience: beats give up meanwhile
        assert held.beaten == before and held.lost is None
        held.check()                                              # an outage alone never loses the lease
        proxied.mode = "pass"
        assert wait(lambda: held.beaten > before, 30), "the heartbeat did not come back"
        held.check()


def test_a_takeover_during_the_outage_stops_the_writer_when_the_store_returns(s3, proxied, quick, monkeypatch):
    from pipeline.errors import LeaseLostError

    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 0.2)
    out = f"s3://vidfeat-test/takeover-{time.time_ns()}"
    ledger = Ledger(out)
    with WriterLease(ledger) as held:
        ledger.claim(held)
        commit(ledger, "part-r-00000", ["a"])
        proxied.mode = "blackhole"                                # this writer is cut off; another,
        lease = f".writers/{held.me['id']}.json"                  # not cut off, takes over
        code = ("import sys; from pipeline.store.ledger import Ledger; other = Ledger(sys.argv[1]); "
                "other.fs.rm(other.path(sys.argv[2])); other.claim()")
        env = {**os.environ, "FSSPEC_S3_ENDPOINT_URL": s3["env"]["FSSPEC_S3_ENDPOINT_URL"]}
        subprocess.run([sys.executable, "-c", code, out, lease], env=env, check=True, timeout=120)
        proxied.mode = "pass"
        assert wait(lambda: held.lost is not None, 30)
        with pytest.raises(LeaseLostError):
            commit(ledger, "part-r-00001", ["b"])
    assert Ledger(out).load().done == {"a"}


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


@pytest.mark.parametrize("command, mode, on", [("status", "blackhole", "{bucket}"),
                                              ("verify", "blackhole", "GET /{bucket}/{name}/videos/"),
                                              ("compact", "slowdown", "GET /{bucket}/{name}/videos/")])
def test_status_verify_and_compact_ride_out_an_outage(s3, proxied, command, mode, on):
    """The same patience for the other commands; verify and compact meet it reading a data file."""
    from conftest import run_cli

    name = f"cmd-{command}-{time.time_ns()}"
    out = f"s3://{s3['bucket']}/{name}"
    writer = Ledger(out)
    writer.claim()
    commit(writer, "part-r-00000", ["a", "b"])
    commit(writer, "part-r-00001", ["c"])
    writer.fold()
    proxied.outage(mode, 4, on=on.format(bucket=s3["bucket"], name=name).encode())
    env = {**s3["env"], "FSSPEC_S3_ENDPOINT_URL": proxied.url, "VIDFEAT_STORAGE_PATIENCE_S": "30",
           "VIDFEAT_STORAGE_DEADLINE_S": "2"}
    result = run_cli(command, out, env_extra=env, timeout=120)
    assert proxied.faulted_at is not None, "the outage never started"
    assert result.returncode == 0 and "failing (" in result.stderr, result.stdout + result.stderr[-3000:]
    assert Ledger(out).load().done == {"a", "b", "c"}


# --- a real run through an outage ---------------------------------------------------------------------------

@pytest.fixture
def good_videos(corpus, tmp_path):
    """A manifest of the corpus's good videos (a run over it ends 0)."""
    path = tmp_path / "good.csv"
    with open(path, "w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["video_id", "uri"])
        rows.writerows([name, os.path.join(corpus["dir"], name)] for name in corpus["good"])
    return {"manifest": str(path), "ids": sorted(corpus["good"])}


def start_run(proxy: FaultProxy, s3, ray_head, manifest: str, out: str, tmp_path,
              patience: float = PATIENCE_S) -> subprocess.Popen:
    """`vidfeat extract` to `out` through `proxy`, one commit per video, patience and deadline short."""
    config = tmp_path / "run.yaml"
    config.write_text("run: {commit_every: 1}\n")
    env = {**ray_env(), **s3["env"], "FSSPEC_S3_ENDPOINT_URL": proxy.url,
           "VIDFEAT_STORAGE_PATIENCE_S": str(patience), "VIDFEAT_STORAGE_DEADLINE_S": str(DEADLINE_S)}
    args = ["extract", manifest, "--out", out, "--preset", "tiny", "--checkpoint", "random", "--no-progress",
            "--address", ray_head["address"], "--config", str(config)]
    with open(tmp_path / "stderr", "w") as stderr:              # a file: no pipe to fill while we wait
        return subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)


FIRST_RECORD = b"/ledger/part-"              # the outage starts at the run's first ledger record: mid-run


@pytest.mark.parametrize("mode", ["refuse", "blackhole", "slowdown"])
def test_a_run_rides_out_an_outage_shorter_than_the_patience(s3, ray_head, proxied, good_videos, tmp_path, mode):
    from pipeline.read.parts import read_table
    from pipeline.read.verify import verify

    out = f"s3://vidfeat-test/run-{mode}-{time.time_ns()}"
    proxied.outage(mode, OUTAGE_S, on=FIRST_RECORD)
    run = start_run(proxied, s3, ray_head, good_videos["manifest"], out, tmp_path, patience=RIDING_S)
    run.wait(timeout=300)
    stderr = (tmp_path / "stderr").read_text()
    assert proxied.faulted_at is not None, "the outage never started"
    assert run.returncode == 0, stderr[-3000:]
    assert "failing (" in stderr and "retrying for up to" in stderr, stderr[-3000:]     # it did meet the outage
    assert verify(out)["ok"]
    assert sorted(read_table(out, "videos", ["video_id"]).column("video_id").to_pylist()) == good_videos["ids"]


@pytest.mark.parametrize("mode", ["blackhole", "refuse"])
def test_a_run_ends_74_with_one_line_after_an_outage_longer_than_the_patience(s3, ray_head, proxied, good_videos,
                                                                              tmp_path, mode):
    out = f"s3://vidfeat-test/gone-{mode}-{time.time_ns()}"
    proxied.outage(mode, 120, on=FIRST_RECORD)
    run = start_run(proxied, s3, ray_head, good_videos["manifest"], out, tmp_path)
    try:
        run.wait(timeout=300)
        ended = time.monotonic()
    finally:
        proxied.mode = "pass"
    stderr = (tmp_path / "stderr").read_text()
    assert proxied.faulted_at is not None, "the outage never started"
    assert run.returncode == 74, stderr[-3000:]
    waited = ended - proxied.faulted_at
    print(f"{mode}: exit 74 {waited:.1f} s after the outage began (bound {PATIENCE_S + DEADLINE_S:.0f} s + "
          f"{EXIT_SLACK_S:.0f} s to leave)")
    assert waited <= PATIENCE_S + DEADLINE_S + EXIT_SLACK_S, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("vidfeat extract:")]
    assert len(lines) == 1, stderr[-3000:]
    line = lines[0]
    assert "I/O error: StorageError" in line and out.removeprefix("s3://") in line, line
    assert "patience 8 s" in line and ("DeadlineExceeded" in line or "Connection" in line), line
