"""`vidfeat extract` in a subprocess, caught mid-run: for the tests that signal or kill a run (exit codes, the
graceful stop, the Ray reaper). Its videos come through a gate (gate.py) that lets two through, so the run
commits the first and then waits at the gate: a signal or a kill sent then lands mid-run by construction,
however slow the machine, and a run resumed after it has few videos left to do.

The videos are one clip long (20 frames of the tiny preset), one a decode task. Ray Data hands on a block
once the next one exists or its task has ended: the first video's clip reaches the driver when the second's
has come out of inference, and the second has no clip in the driver, so a graceful stop has nothing in
flight to wait for. (A task of two videos would hold the first one's clip while it waits for the second.)

The SIGTERM of a run on its own embedded Ray (to the driver) is made once per test session and checked by
test_exit_codes (the exit) and test_graceful_stop (what it committed and recorded, the resume): its output
is read only; the resume runs on a copy.
"""
from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from pipeline.synthetic.samples import write_index_video
from pipeline.store.ledger import Ledger

from conftest import ray_env
from gate import HELD_S, Gate, until

VIDEOS = 8


@dataclass(frozen=True)
class MidRun:
    proc: subprocess.Popen
    out: str
    command: list[str]            # `python -m pipeline extract ...` without the test's extra arguments
    env: dict
    gate: Gate

    def again(self, out: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        """The same command, run to its end (on `out` instead of the run's output, if given)."""
        command = [out if arg == self.out and out else arg for arg in self.command]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def caught_mid_run(folder, extra_args: tuple = (), env_extra: dict | None = None):
    """Start `vidfeat extract` (tiny preset, random weights, a commit and a task per video, an embedded Ray unless
    `extra_args` give an address) on VIDEOS videos behind a gate, in a session of its own; yield a MidRun
    once it has committed a video and waits at the gate. Leaving, the gate opens and stops, and a run still
    going is killed with its process group."""
    names = [f"v{i:02d}.mp4" for i in range(VIDEOS)]
    os.makedirs(folder / "videos")
    for name in names:
        write_index_video(str(folder / "videos" / name), num_frames=20)
    (folder / "run.yaml").write_text("run:\n  commit_every: 1\n  videos_per_task: 1\n")
    with Gate(str(folder / "videos"), admit=2) as gate:
        manifest = folder / "videos.csv"
        manifest.write_text("video_id,uri\n" + "".join(f"{name},{gate.uri(name)}\n" for name in names))
        out = str(folder / "out")
        command = [sys.executable, "-m", "pipeline", "extract", str(manifest), "--out", out, "--preset", "tiny",
                   "--checkpoint", "random", "--config", str(folder / "run.yaml"), "--no-progress"]
        env = {**ray_env(), "VIDFEAT_DOWNLOAD_STALL_S": HELD_S, **(env_extra or {})}
        proc = subprocess.Popen([*command, *extra_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            until(lambda: committed(out) and gate.held.is_set(), proc)
            yield MidRun(proc, out, command, env, gate)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


def committed(out: str) -> bool:
    """Whether a commit record exists (a part committed, not folded yet)."""
    return bool(glob.glob(os.path.join(out, "ledger", "*.json")))


@dataclass(frozen=True)
class Stopped:
    run: MidRun
    done_at_signal: int           # videos committed when the signal was sent
    returncode: int
    stdout: str
    stderr: str


def sigterm(run: MidRun, whole_group: bool) -> Stopped:
    """SIGTERM to the driver, or to its whole process group; returns once the run has ended."""
    done = len(Ledger(run.out).load().done)
    (os.killpg if whole_group else os.kill)(run.proc.pid, signal.SIGTERM)
    stdout, stderr = run.proc.communicate(timeout=300)
    return Stopped(run, done, run.proc.returncode, stdout, stderr)


_SHARED: dict[str, Stopped] = {}


def shared_sigterm_run(request) -> Stopped:
    """A run on its own embedded Ray (--drain-s 20, its log folder its own) SIGTERMed to the driver
    mid-run, once per test session; its gate stays open (for a resume) until the session ends."""
    if "run" not in _SHARED:
        folder = request.getfixturevalue("tmp_path_factory").mktemp("sigterm-run")
        stack = contextlib.ExitStack()
        request.config.add_cleanup(stack.close)
        run = stack.enter_context(caught_mid_run(folder, ("--drain-s", "20"),
                                                 {"VIDFEAT_LOG_DIR": str(folder / "logs")}))
        _SHARED["run"] = sigterm(run, whole_group=False)
        run.gate.open()
    return _SHARED["run"]
