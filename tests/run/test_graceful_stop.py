"""A graceful stop (issue #21): SIGTERM or SIGINT lets the clips in flight finish within a bound, commits
every finished video, records the run as interrupted, releases the lease and exits 143 / 130; a second
signal stops at once; the next run resumes with every video exactly once."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import threading
import time

import pytest

from pipeline.errors import Terminated
from pipeline.read.parts import read_table
from pipeline.run.drain import GracefulStop, pulled
from pipeline.store.ledger import Ledger

from conftest import run_cli
from midrun import VIDEOS, shared_sigterm_run


def slow_results(n: int, every_s: float = 0.05):
    for i in range(n):
        time.sleep(every_s)
        yield i


def signal_self_soon(sig: int, after_s: float) -> None:
    threading.Timer(after_s, lambda: os.kill(os.getpid(), sig)).start()


def test_a_stop_waits_for_the_videos_in_flight_then_ends_the_stream():
    in_flight = {7}                                        # a video whose clips are still coming
    stop, seen, before = GracefulStop(drain_s=30), [], signal.getsignal(signal.SIGTERM)
    with stop.handling():
        for item in pulled(slow_results(1000), stop, lambda: in_flight):
            seen.append(item)
            if item == 3:
                os.kill(os.getpid(), signal.SIGTERM)       # the handler only sets a flag
            if item == 10:
                in_flight.clear()                          # video 7's last clip came back
    assert stop.name == "SIGTERM" and 10 <= seen[-1] <= 12 and seen == list(range(len(seen)))
    assert signal.getsignal(signal.SIGTERM) is before                   # the handler is restored


def never_yields():
    threading.Event().wait()                               # a stream whose next result never comes
    yield 0


def test_nothing_in_flight_ends_the_stream_at_once_even_while_no_result_comes():
    stop = GracefulStop(drain_s=3600)
    signal_self_soon(signal.SIGINT, 0.3)
    with stop.handling():
        items = list(pulled(never_yields(), stop, set))    # returns although the iterator never does
    assert stop.name == "SIGINT" and items == []


class StepClock:
    """A clock the test moves: one second for each result the driver takes."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_bound_ends_a_drain_that_does_not_finish():
    clock = StepClock()
    stop, taken = GracefulStop(drain_s=30, clock=clock), []
    with stop.handling():
        for item in pulled(range(1000), stop, lambda: {1}):     # video 1 never finishes
            taken.append(item)
            clock.now += 1
            if item == 9:
                os.kill(os.getpid(), signal.SIGTERM)            # at clock 10: the bound ends it at 40
    assert stop.name == "SIGTERM" and stop.since == 10 and clock.now == 40
    assert taken == list(range(40))


def test_a_second_signal_stops_at_once():
    stop = GracefulStop(drain_s=30)
    with pytest.raises(Terminated), stop.handling():
        for item in pulled(slow_results(1000), stop, lambda: {1}):
            if item in (2, 5):
                os.kill(os.getpid(), signal.SIGTERM)


def test_an_error_of_the_stream_reaches_the_driver():
    def broken():
        yield 1
        raise RuntimeError("the cluster failed")
    with pytest.raises(RuntimeError, match="cluster failed"):
        list(pulled(broken(), GracefulStop(), set))


def test_sigterm_mid_run_commits_what_finished_records_it_and_the_next_run_resumes(request, tmp_path):
    stopped = shared_sigterm_run(request)            # the run test_exit_codes checks the exit of
    out = stopped.run.out
    assert stopped.returncode == 143, stopped.stderr
    assert "finishing the clips in flight" in stopped.stdout
    assert "terminated (SIGTERM); committed work is safe" in stopped.stderr
    assert not [n for n in os.listdir(os.path.join(out, ".writers")) if n.endswith(".json")]  # lease released
    state = Ledger(out).load()
    assert stopped.done_at_signal <= len(state.done) < VIDEOS
    run, = [json.load(open(p)) for p in glob.glob(os.path.join(out, "runs", "*.json"))]
    assert run["summary"]["interrupted"] == "SIGTERM" and run["summary"]["ok"] == len(state.done)
    resumed_out = shutil.copytree(out, str(tmp_path / "out"))                    # the shared output stays as it was
    resumed = stopped.run.again(resumed_out)
    assert resumed.returncode == 0, resumed.stderr
    ids = read_table(resumed_out, "videos", ["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == sorted(f"v{i:02d}.mp4" for i in range(VIDEOS))       # every video exactly once
    assert run_cli("verify", resumed_out).returncode == 0
