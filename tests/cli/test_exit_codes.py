"""Every exit code means one thing (pipeline/cli/entry.py's docstring, DESIGN.md §5), and a process exits with
it every time: 0 done, 1 failures found, 2 usage / damaged output, 3 failure rate, 70 unexpected,
74 I/O error, 75 lease lost, 130 SIGINT, 143 SIGTERM — with one line on stderr naming the cause, the
traceback in a log file. Real subprocesses where the failure can be made real, `main` in process
(monkeypatched) where it cannot (a full disk, a bug)."""
from __future__ import annotations

import errno
import glob
import os
import shutil
import signal
import subprocess
import sys

import pytest

from pipeline import cli
from pipeline.cli.commands import require_output
from pipeline.errors import ConfigError, LeaseLostError

from conftest import ray_env, run_cli
from featurekit import build_output
from midrun import VIDEOS, Stopped, caught_mid_run, shared_sigterm_run, sigterm


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> str:
    """A committed output (3 videos, 1 failure, in 2 parts); copy it before damaging it."""
    return build_output(str(tmp_path_factory.mktemp("exit-codes")), per_class=1, videos_per_part=2).out


@pytest.fixture
def copy(finished, tmp_path) -> str:
    return shutil.copytree(finished, str(tmp_path / "out"))


@pytest.fixture(autouse=True)
def log_dir(tmp_path, monkeypatch) -> str:
    folder = str(tmp_path / "logs")
    monkeypatch.setenv("VIDFEAT_LOG_DIR", folder)
    return folder


def one_line(stderr: str) -> str:
    """stderr holds exactly one line, and no traceback; returns it."""
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr and "terminate called" not in stderr
    return stderr.rstrip("\n")


def logged_traceback(line: str) -> str:
    """The log file the line names ('traceback in PATH'), read."""
    path = line.rsplit("traceback in ", 1)[1]
    with open(path) as fh:
        text = fh.read()
    assert "Traceback (most recent call last)" in text
    return text


# ------------------------------------------------------------------ 0, 1, 2: real runs

def test_finished_output_is_0_for_status_and_verify(finished):
    for command in ("status", "verify"):
        done = run_cli(command, finished)
        assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize("command", [["status"], ["verify"], ["compact"], ["search", "--video-id", "a"]])
def test_a_path_that_holds_no_output_is_a_usage_error(tmp_path, command):
    typo = str(tmp_path / "typo")
    done = run_cli(command[0], typo, *command[1:])
    assert done.returncode == 2
    assert typo in one_line(done.stderr) and "not a vidfeat output directory" in done.stderr
    assert not os.path.exists(typo)                              # compact did not create it
    os.mkdir(typo)                                               # an empty directory is no output either
    assert run_cli(command[0], typo, *command[1:]).returncode == 2 and os.listdir(typo) == []


def test_require_output_accepts_a_run_json_or_a_ledger(tmp_path):
    with pytest.raises(ConfigError, match="not a vidfeat output directory"):
        require_output(str(tmp_path))
    (tmp_path / "run.json").write_text("{}")
    require_output(str(tmp_path))
    require_output(f"file://{tmp_path}/")


def test_a_truncated_data_file_is_a_problem_verify_finds_1(copy):
    part = sorted(glob.glob(os.path.join(copy, "videos", "*.parquet")))[0]
    with open(part, "r+b") as fh:
        fh.truncate(os.path.getsize(part) // 2)
    done = run_cli("verify", copy)
    assert done.returncode == 1 and "PROBLEM" in done.stdout and "FAILED" in done.stdout, done.stdout
    assert done.stderr == ""


def test_a_truncated_ledger_record_is_damaged_output_2(copy):
    record = sorted(glob.glob(os.path.join(copy, "ledger", "*.json")))[0]
    with open(record, "r+b") as fh:
        fh.truncate(20)
    for command in ("status", "verify"):
        done = run_cli(command, copy)
        assert done.returncode == 2 and record in one_line(done.stderr), done.stderr


def test_a_missing_input_named_on_the_command_line_is_2(tmp_path):
    done = run_cli("inspect", str(tmp_path / "no-such.mp4"))
    assert done.returncode == 2 and "no-such.mp4" in one_line(done.stderr)


# ------------------------------------------------------------------ 70, 74: one line, the traceback logged

def test_an_unreadable_ledger_record_is_an_io_error_74_naming_it(copy, log_dir):
    record = sorted(glob.glob(os.path.join(copy, "ledger", "*.json")))[0]
    os.remove(record)
    os.mkdir(record)                                 # open() fails: IsADirectoryError (root can read 000 files)
    done = run_cli("status", copy, env_extra={"VIDFEAT_LOG_DIR": log_dir})
    line = one_line(done.stderr)
    assert done.returncode == 74, done.stderr
    assert line.startswith("vidfeat status: I/O error: IsADirectoryError: ") and f"(file: {record})" in line
    assert "committed work is safe; the same command resumes" in line
    assert record in logged_traceback(line) and os.path.dirname(line.rsplit(" ", 1)[1]) == log_dir


BUG = """
import sys
import pipeline.read.verify
def verify(out):
    raise RuntimeError("a bug\\x1b[2J\\nsecond line")
pipeline.read.verify.verify = verify
from pipeline.cli import run_cli
run_cli(sys.argv[1:])
"""


def test_an_unexpected_error_is_70_on_one_escaped_line(finished, log_dir):
    done = subprocess.run([sys.executable, "-c", BUG, "verify", finished], capture_output=True, text=True,
                          env={**ray_env(), "VIDFEAT_LOG_DIR": log_dir}, timeout=300)
    line = one_line(done.stderr)
    assert done.returncode == 70
    assert line.startswith("vidfeat verify: unexpected error: RuntimeError: a bug\\x1b[2J\\nsecond line; ")
    assert "second line" in logged_traceback(line)
    verbose = subprocess.run([sys.executable, "-c", BUG, "-v", "verify", finished], capture_output=True,
                             text=True, env={**ray_env(), "VIDFEAT_LOG_DIR": log_dir}, timeout=300)
    assert verbose.returncode == 70 and "Traceback (most recent call last)" in verbose.stderr


def raiser(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("exc, code, says", [
    (OSError(errno.ENOSPC, "No space left on device", "/out/videos/part-1.parquet"), 74,
     "I/O error: OSError: [Errno 28] No space left on device (file: /out/videos/part-1.parquet); committed work"),
    (OSError(errno.EIO, "Input/output error"), 74, "I/O error: OSError: [Errno 5] Input/output error; committed"),
    (PermissionError(errno.EACCES, "Permission denied", "/out/ledger"), 74,
     "I/O error: PermissionError: [Errno 13] Permission denied (file: /out/ledger)"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/out/clips/x"), 74,
     "I/O error: FileNotFoundError: [Errno 2] No such file or directory (file: /out/clips/x)"),
    (KeyError("num_clips"), 70, "unexpected error: KeyError: 'num_clips'; committed work is safe"),
    (LeaseLostError("another writer took the lease"), 75,
     "lease lost: another writer took the lease; another writer took over; committed work is safe; run again"),
    (KeyboardInterrupt(), 130, "interrupted (SIGINT); committed work is safe; the same command resumes"),
])
def test_each_kind_of_end_has_its_code(finished, monkeypatch, capsys, exc, code, says):
    monkeypatch.setattr("pipeline.store.compaction.compact", raiser(exc))
    assert cli.main(["compact", finished]) == code
    captured = capsys.readouterr()
    assert says in one_line(captured.err) and captured.out == ""
    assert ("traceback in " in captured.err) == (code in (70, 74))


def test_sigterm_before_ray_unwinds_to_143_and_restores_the_handler(finished, monkeypatch, capsys):
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr("pipeline.read.status.status", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    assert cli.main(["status", finished]) == 143
    assert "terminated (SIGTERM)" in one_line(capsys.readouterr().err)
    assert signal.getsignal(signal.SIGTERM) is before


def test_rays_sigterm_handler_exit_is_143_and_other_exits_pass(finished, monkeypatch, capsys):
    monkeypatch.setattr("pipeline.read.status.status", raiser(SystemExit(signal.SIGTERM)))  # what ray.init installs
    assert cli.main(["status", finished]) == 143
    monkeypatch.setattr("pipeline.read.status.status", raiser(SystemExit(4)))
    with pytest.raises(SystemExit):
        cli.main(["status", finished])


# ------------------------------------------------------------------ the process exits with its code

# A native exit handler that aborts, as the static destructors of native threads (pyarrow, h5py) sometimes
# did at teardown ('terminate called without an active exception', 134, after the result was printed):
# it runs if and only if the process ends through exit() instead of leaving with os._exit.
ABORT_AT_EXIT = """
import ctypes
import sys
libc = ctypes.CDLL(None)
assert libc.on_exit(ctypes.cast(libc.abort, ctypes.c_void_p), None) == 0
if sys.argv[1:] == ["--plain-exit"]:
    sys.exit(0)
from pipeline.cli import run_cli
run_cli(sys.argv[1:])
"""


def test_status_and_verify_exit_with_their_code_every_time(finished):
    """Three at a time, each with a native exit handler that aborts: an abort at teardown needs no unlucky
    timing to show, it happens to every process that runs native teardown (the control: a plain exit)."""
    control = subprocess.run([sys.executable, "-c", ABORT_AT_EXIT, "--plain-exit"], capture_output=True, timeout=60)
    assert control.returncode == -signal.SIGABRT, control
    procs = [subprocess.Popen([sys.executable, "-c", ABORT_AT_EXIT, command, finished], env=ray_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for command in ("status", "verify", "verify")]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "terminate called" not in err, (proc.returncode, err)
        assert out.strip()


@pytest.fixture(params=["driver", "process-group"])
def sigterm_stopped(request, tmp_path, log_dir) -> Stopped:
    """A run on its own embedded Ray signalled after its first commit: to the driver (a scheduler's
    preemption of the main process: the session's shared run, which test_graceful_stop checks too) or to
    its whole process group (timeout(1), systemd, Slurm: the embedded Ray's processes get it too)."""
    if request.param == "driver":
        return shared_sigterm_run(request)
    with caught_mid_run(tmp_path, env_extra={"VIDFEAT_LOG_DIR": log_dir}) as run:
        return sigterm(run, whole_group=True)


def test_sigterm_stops_an_extract_commits_and_exits_143(sigterm_stopped):
    """143 (not 134), one line, the lease released, the output sound."""
    stopped, out = sigterm_stopped, sigterm_stopped.run.out
    assert stopped.returncode == 143, stopped.stderr
    assert "terminated (SIGTERM); committed work is safe" in one_line(stopped.stderr)
    assert not [n for n in os.listdir(os.path.join(out, ".writers")) if n.endswith(".json")]  # the lease is released
    assert run_cli("verify", out).returncode == 0


def test_a_raylet_killed_under_an_extract_is_69_on_one_line_and_the_run_resumes(tmp_path, log_dir):
    """The embedded Ray's raylet killed by pid after the first commit: Ray's core ends the driver (exit 1,
    no word); the supervisor makes it 69 (the cluster failed) with one line; the output is sound and the
    same command, started at once (the dead driver's lease is seen as dead), finishes the corpus."""
    import ray  # noqa: F401 - puts Ray's own copy of psutil on sys.path

    import psutil
    with caught_mid_run(tmp_path, env_extra={"VIDFEAT_LOG_DIR": log_dir}) as run:
        raylets = [p for p in psutil.Process(run.proc.pid).children(recursive=True) if p.name() == "raylet"]
        assert raylets, "the embedded Ray has a raylet"
        for raylet in raylets:
            raylet.kill()
        stdout, err = run.proc.communicate(timeout=300)
        assert run.proc.returncode == 69, (stdout[-3000:], err)
        assert "the Ray cluster failed under the run" in one_line(err) and "committed work is safe" in err
        assert run_cli("verify", run.out).returncode == 0
        run.gate.open()
        again = run.again()
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"{VIDEOS} videos" in run_cli("verify", run.out).stdout
