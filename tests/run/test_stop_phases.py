"""A graceful stop in every phase of a run (issue #30, item 1): the first SIGTERM or SIGINT, whichever
phase it lands in (claiming the output, starting Ray, extracting, folding, compacting, recording the
run), ends the run as drain.py promises — the phase finished or abandoned whole (no `.compact-*`, no
`.tmp-*` in the output, no `<tmp>/vidfeat-compact-*`), the run recorded as interrupted, the lease
released, exit 143 / 130 with its one line — and the next run finishes with every video exactly once.
`vidfeat compact` likewise (no run record there).

Each phase is held at a named point (faults.py: VIDFEAT_PAUSEPOINTS); the test sends the signal to the
command while it is held there, waits until the command says it took it (or has ended), then lets it go on.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import signal
import sys
import threading
from types import SimpleNamespace

import pytest

from pipeline.synthetic.samples import write_index_video
from pipeline.read.parts import read_table
from pipeline.run.cluster import keeping_signal_handlers
from pipeline.run.drain import GracefulStop
from pipeline.run.metrics import hold_final
from pipeline.store.ledger import Ledger

from conftest import free_port, run_cli, wait_for
from held import Held
from partkit import build_output

VIDEOS = [f"v{i}.mp4" for i in range(4)]          # a part each (commit_every 1, batches of 1): one merge at the end
EXTRACT_PHASES = {
    "claim.epoch": "claiming the output",
    "ray.started": "starting Ray",
    "driver.result": "extracting",
    "fold.index": "folding the ledger",
    "compact.data": "compacting, the merged files staged",
    "compact.record": "compacting, the merge recorded",
    "run.record": "recording the run",
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("phase-videos")
    for name in VIDEOS:
        write_index_video(str(root / name), num_frames=20)
    (root / "run.yaml").write_text("run:\n  commit_every: 1\n")
    return root


def extract_args(videos, out: str, address: str | None) -> list[str]:
    args = ["extract", str(videos), "--out", out, "--preset", "tiny", "--checkpoint", "random", "--config",
            str(videos / "run.yaml"), "--batch-size", "1", "--videos-per-task", "1", "--no-progress",
            "--drain-s", "120"]
    return args + (["--address", address] if address else [])


def staged(out: str, tmp: str) -> list[str]:
    """What a stop may not leave behind: staged merges and temporaries in `out`, merge folders in `tmp`."""
    left = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files if f.startswith((".compact-", ".tmp-"))]
    return left + glob.glob(os.path.join(tmp, "vidfeat-compact-*"))


def assert_stopped_gracefully(out: str, tmp: str, sig: int, code: int, stderr: str, command: str = "extract"):
    name = signal.Signals(sig).name
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert code == 128 + sig, stderr
    assert f"vidfeat {command}: {word} ({name}); committed work is safe" in stderr, stderr
    assert "its process was killed" not in stderr
    assert not [n for n in os.listdir(os.path.join(out, ".writers")) if n.endswith(".json")]  # lease released
    assert staged(out, tmp) == []
    verify = run_cli("verify", out)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def run_records(out: str) -> list[dict]:
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "runs", "*.json")))]


def assert_every_video_once(out: str, expected: list[str] = VIDEOS) -> None:
    ids = read_table(out, "videos", ["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == expected


def stopped_extract(videos, tmp_path, point: str, sig: int, address: str | None) -> str:
    """Run extract held at `point`, stop it there with `sig`, check the stop; the output's path."""
    out, tmp = str(tmp_path / "out"), str(tmp_path / "tmp")
    os.makedirs(tmp)
    held = Held(extract_args(videos, out, address), point, tmp)
    held.stop_there(sig)
    code, stdout, stderr = held.finish()
    assert_stopped_gracefully(out, tmp, sig, code, stderr)
    run, = run_records(out)
    assert run["summary"]["interrupted"] == signal.Signals(sig).name, stderr
    assert run["summary"]["ok"] == len(Ledger(out).load().done)         # a fresh output: all of this run
    return out


@pytest.mark.parametrize("point", list(EXTRACT_PHASES), ids=list(EXTRACT_PHASES.values()))
def test_sigterm_in_each_phase_of_a_run_stops_it_gracefully_and_the_next_run_finishes(videos, tmp_path,
                                                                                     ray_head, point):
    out = stopped_extract(videos, tmp_path, point, signal.SIGTERM, ray_head["address"])
    merged = {"fold.index": False, "compact.data": False, "compact.record": True, "run.record": True}
    if point in merged:                       # the upkeep's own outcome: not started, abandoned, finished
        assert (len(Ledger(out).load().segments) == 1) == merged[point]
    resumed = run_cli(*extract_args(videos, out, ray_head["address"]), timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert_every_video_once(out)
    assert run_cli("verify", out).returncode == 0
    assert staged(out, str(tmp_path / "tmp")) == []
    assert not [n for n in os.listdir(os.path.join(out, ".writers")) if n.endswith(".json")]      # lease released


@pytest.mark.parametrize("point", ["fold.index", "compact.data"])
def test_a_stop_after_an_embedded_ray_shut_down_is_graceful_too(videos, tmp_path, point):
    """An embedded Ray's shutdown left SIGTERM at SIG_DFL (its C++ core), so the process died outright."""
    sig = signal.SIGTERM if point == "compact.data" else signal.SIGINT
    out = stopped_extract(videos, tmp_path, point, sig, None)
    assert len(Ledger(out).load().done) == len(VIDEOS)        # extraction was over: every video committed


@pytest.mark.parametrize("point", ["compact.data", "compact.record"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_during_vidfeat_compact_keeps_the_output_whole(tmp_path, point, sig):
    out, tmp = str(tmp_path / "out"), str(tmp_path / "tmp")
    build_output(out, parts=4)                                   # four small parts: one merge
    ids = sorted(Ledger(out).load().done)
    os.makedirs(tmp)
    held = Held(["compact", out], point, tmp)
    held.stop_there(sig)
    code, stdout, stderr = held.finish()
    assert_stopped_gracefully(out, tmp, sig, code, stderr, command="compact")
    assert_every_video_once(out, ids)
    merged = len(Ledger(out).load().segments) == 1
    assert merged == (point == "compact.record")      # staged: abandoned whole; recorded: finished
    again = run_cli("compact", out)
    assert again.returncode == 0, again.stderr
    assert len(Ledger(out).load().segments) == 1 and staged(out, tmp) == []
    assert_every_video_once(out, ids)


def test_handlers_that_ray_replaces_or_resets_behind_pythons_back_are_put_back():
    """What Ray does: ray.init installs a sys.exit handler, ray.shutdown leaves SIG_DFL at the C level
    while signal.getsignal still names a Python handler. The stop's handler is in force after both."""
    stop = GracefulStop(drain_s=30)
    with stop.handling():
        with keeping_signal_handlers():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))       # ray.init
        with keeping_signal_handlers():
            ctypes.CDLL(None).signal(signal.SIGTERM, ctypes.c_void_p(0))               # ray.shutdown: SIG_DFL
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGTERM)                                        # not a death: a stop
        assert wait_for(lambda: stop.signal is not None, timeout=60)
    assert stop.name == "SIGTERM"


def test_a_sigterm_that_rays_handler_turned_into_an_exit_goes_to_the_stop():
    stop = GracefulStop(drain_s=30)
    with stop.handling():
        with keeping_signal_handlers():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
            raise SystemExit(signal.SIGTERM)                     # a SIGTERM while ray.init ran
        assert signal.getsignal(signal.SIGTERM) == stop._handle
    assert stop.name == "SIGTERM"


def test_a_signal_that_ends_the_hold_of_the_final_metrics_stops_the_run_too():
    stop, theirs = GracefulStop(drain_s=30), None

    def signal_once_held():                                     # once hold_final has taken the signals
        assert wait_for(lambda: signal.getsignal(signal.SIGTERM) != theirs, timeout=60)
        os.kill(os.getpid(), signal.SIGTERM)

    with stop.handling():
        theirs = signal.getsignal(signal.SIGTERM)
        threading.Thread(target=signal_once_held, daemon=True).start()
        seen = hold_final(SimpleNamespace(expected=lambda: {"ray_vidfeat_clips": 3.0}), free_port(),
                          linger_s=3600, timeout_s=3600)
    assert seen is False and stop.name == "SIGTERM"
