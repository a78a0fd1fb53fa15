"""jobs/slurm_extract.sbatch on a real Slurm (issue #21): Debian's slurm-wlm with munge, a slurmctld and
a slurmd on this machine (loopback, ports of their own), started once for the module and stopped after. The
job starts a Ray cluster over its allocation and runs the extraction; a job told to stop the way Slurm does
before its time limit (SIGTERM to the batch script) drains, requeues itself and resumes; a running job
requeued with `scontrol requeue` resumes too; in the end every video is there exactly once.

Each attempt of a job starts a Ray cluster and a driver (most of a test's time), so the two stops are made
to one job, one after the other, and each has its test: the job reads its videos through a gate (gate.py)
that lets only a few through, so each stop lands mid-run by construction.

Needs root (SlurmUser=root; else the tests skip) and the Slurm binaries (`.ci/run` installs them):
without them the tests skip with the reason, unless CI is set, where that fails."""
from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from pipeline.synthetic.samples import write_index_video
from pipeline.read.parts import read_table
from pipeline.store.ledger import Ledger

from conftest import free_port, ray_env, run_cli, stop_tree, wait_for
from gate import HELD_S, Gate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAEMONS = ("slurmctld", "slurmd", "munged")


def require_slurm() -> None:
    if os.geteuid() != 0:
        pytest.skip("the local Slurm runs its daemons as root (SlurmUser=root); this test process is not root")
    missing = [d for d in DAEMONS + ("sbatch", "munge") if not (shutil.which(d) or os.path.exists(f"/usr/sbin/{d}"))]
    if missing:
        why = f"Slurm is not installed (missing {missing}): `apt-get install slurm-wlm munge` (.ci/run does)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)                   # CI installs them: missing there is a broken CI
        pytest.skip(why)


def slurm_conf(folder: str, host: str) -> str:
    """The cluster's slurm.conf. Job ids start at a random number: the batch script names its Ray port and
    temporary folder after the id, which must not meet those of another test session on this machine.
    KillWait, the seconds from a step's SIGTERM to its SIGKILL, bounds how long the end of every attempt
    waits for `ray start --block` (which drains for up to 30 s on SIGTERM); the driver's own graceful stop
    takes a second or two."""
    ctld, slurmd = free_port(), free_port()
    conf = f"""ClusterName=vidfeattest
FirstJobId={random.randrange(1000, 9000)}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    path = os.path.join(folder, "slurm.conf")
    with open(path, "w") as fh:
        fh.write(conf)
    return path


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm on this machine: {"env": the environment its commands need}."""
    require_slurm()
    folder = str(tmp_path_factory.mktemp("slurm"))
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    env = {**ray_env(), "SLURM_CONF": slurm_conf(folder, host)}
    started = [_munged()]
    try:
        for daemon in ("slurmctld", "slurmd"):
            args = [f"/usr/sbin/{daemon}", "-D", "-f", env["SLURM_CONF"]] + (["-c"] if daemon == "slurmctld" else [])
            started.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True))
        assert wait_for(lambda: "idle" in _run(["sinfo", "-h", "-o", "%t"], env).stdout, timeout=60), \
            open(os.path.join(folder, "slurmctld.log")).read()[-3000:]
        yield {"env": env, "folder": folder}
    finally:
        cancel_jobs(env)
        for proc in reversed([p for p in started if p is not None]):
            stop_tree(proc)


def cancel_jobs(env: dict) -> None:
    """Cancel what a failed test left queued or running, and wait until it is gone: a job step outlives
    slurmd (its slurmstepd and the Ray it started would hold their ports past the session)."""
    if _run(["scancel", "--user=root"], env).returncode == 0:
        assert wait_for(lambda: _run(["squeue", "-h"], env).stdout.strip() == "", timeout=120, interval=0.5), \
            _run(["squeue"], env).stdout


def _munged():
    """munged, unless one already runs (then it is not ours to stop)."""
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return None
    os.makedirs("/run/munge", exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    proc = subprocess.Popen(["/usr/sbin/munged", "--foreground"], user="munge", stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert wait_for(lambda: subprocess.run(["munge", "-n"], capture_output=True).returncode == 0, timeout=30)
    return proc


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def job_state(job: str, env: dict) -> dict:
    out = _run(["scontrol", "-o", "show", "job", job], env).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def write_videos(folder, videos: int, frames: int = 40) -> list[str]:
    folder.mkdir()
    names = [f"v{i:02d}.mp4" for i in range(videos)]
    for name in names:
        write_index_video(str(folder / name), num_frames=frames)
    return names


def submit(slurm, tmp_path, source: str, env_extra: dict | None = None, config: str = "") -> tuple[str, str]:
    """sbatch the script on `source` (a folder or a manifest), a commit per video (`config`: more of the
    run's YAML section); (job id, output directory)."""
    out = str(tmp_path / "out")
    (tmp_path / "run.yaml").write_text("run:\n  commit_every: 1\n" + config)
    env = {**slurm["env"], "VIDFEAT_SOURCE": source, "VIDFEAT_OUT": out,
           "VIDFEAT_CONFIG": str(tmp_path / "run.yaml"), "VIDFEAT_PYTHON": sys.executable,
           "VIDFEAT_ARGS": "--preset tiny --checkpoint random --no-progress", "VIDFEAT_HEAD_IP": "127.0.0.1",
           **(env_extra or {})}
    done = _run(["sbatch", "--parsable", "--nodes=1", f"--cpus-per-task={os.cpu_count()}",
                 f"--output={tmp_path}/job-%j.log", f"--chdir={ROOT}", os.path.join(ROOT, "jobs", "slurm_extract.sbatch")],
                env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0], out


@contextlib.contextmanager
def gated_job(slurm, tmp_path, videos: int):
    """A job on `videos` one-clip videos, one a decode task, read through a gate that lets two through;
    yields (job, out, gate) once the job runs, has committed the first and waits at the gate (why two:
    midrun.py). The gate opens on leaving."""
    names = write_videos(tmp_path / "videos", videos, frames=20)
    with Gate(str(tmp_path / "videos"), admit=2) as gate:
        manifest = tmp_path / "videos.csv"
        manifest.write_text("video_id,uri\n" + "".join(f"{name},{gate.uri(name)}\n" for name in names))
        job, out = submit(slurm, tmp_path, str(manifest), {"VIDFEAT_DOWNLOAD_STALL_S": HELD_S},
                          config="  videos_per_task: 1\n")
        assert wait_for(lambda: started_committing(out) and gate.held.is_set()
                        and job_state(job, slurm["env"]).get("JobState") == "RUNNING", timeout=300, interval=0.2), \
            (job_state(job, slurm["env"]), job_log(tmp_path)[-4000:])
        yield job, out, gate


def wait_requeued(job: str, env: dict, restarts: int) -> dict:
    """Until Slurm has requeued `job` for the `restarts`-th time (pending again) and its node is idle
    again; returns the job's state then."""
    def requeued() -> bool:
        state = job_state(job, env)
        return int(state.get("Restarts", 0)) >= restarts and state.get("JobState") == "PENDING"
    assert wait_for(requeued, timeout=300, interval=0.2), job_state(job, env)
    assert wait_for(lambda: "idle" in _run(["sinfo", "-h", "-o", "%t"], env).stdout, timeout=120, interval=0.2)
    return job_state(job, env)


def start_now(job: str, env: dict) -> None:
    """Let a requeued job start at once: Slurm holds a requeued job back two minutes (against requeue
    loops), which says nothing about the script and would only slow the test. A credential made in the
    second its job was killed counts as revoked: the job is started in a later second than now."""
    now = time.time()
    time.sleep(int(now) + 1 - now)                           # into the next second: a wait, not a deadline
    assert _run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env).returncode == 0


def job_log(tmp_path) -> str:
    return "".join(open(p).read() for p in sorted(glob.glob(f"{tmp_path}/job-*.log")))


def wait_completed(job: str, env: dict, tmp_path, timeout: float = 600) -> dict:
    assert wait_for(lambda: job_state(job, env).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
                    timeout=timeout, interval=0.2), job_state(job, env)
    state = job_state(job, env)
    assert state["JobState"] == "COMPLETED", (state, job_log(tmp_path)[-4000:])
    return state


def assert_exactly_once(out: str, videos: int) -> None:
    ids = read_table(out, "videos", ["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == [f"v{i:02d}.mp4" for i in range(videos)]
    assert run_cli("verify", out).returncode == 0


def started_committing(out: str) -> bool:
    return bool(glob.glob(os.path.join(out, "ledger", "part-*.json")) or
                glob.glob(os.path.join(out, "ledger", "records", "*.json")))


@pytest.fixture(scope="module")
def stopped_twice(slurm, tmp_path_factory) -> SimpleNamespace:
    """One job on 6 gated videos, stopped mid-run twice and resumed each time: by the time-limit signal to
    the batch script while its first attempt waits at the gate, then, once the next attempt has committed
    another video (one more let through) and waits again, by `scontrol requeue`; then let through and
    run to its end. Its state after each stop, its log after the first, its final state and log."""
    tmp_path, env = tmp_path_factory.mktemp("stopped-twice"), slurm["env"]
    with gated_job(slurm, tmp_path, videos=6) as (job, out, gate):
        assert _run(["scancel", "--batch", "--signal=TERM", job], env).returncode == 0
        after_signal, log_after_signal = wait_requeued(job, env, restarts=1), job_log(tmp_path)
        done = len(Ledger(out).load().done)
        gate.admit(1)
        start_now(job, env)
        assert wait_for(lambda: len(Ledger(out).load().done) > done and job_state(job, env)["JobState"] == "RUNNING",
                        timeout=300, interval=0.2), (job_state(job, env), job_log(tmp_path)[-4000:])
        assert _run(["scontrol", "requeue", job], env).returncode == 0
        after_requeue = wait_requeued(job, env, restarts=2)
        gate.open()
        start_now(job, env)
        final = wait_completed(job, env, tmp_path)
    return SimpleNamespace(id=job, out=out, after_signal=after_signal, log_after_signal=log_after_signal,
                           after_requeue=after_requeue, final=final, log=job_log(tmp_path))


def test_the_batch_script_runs_an_extraction_over_its_allocation(stopped_twice):
    """The job below, seen whole: its first attempt starts Ray on the allocation and extracts (it has
    committed when it is stopped), and its last one ends the extraction with exit 0 (a job of its own
    would add a minute to the suite and check nothing more)."""
    job = stopped_twice
    assert f"vidfeat: job {job.id} (restart 0)" in job.log_after_signal
    assert job.log.rstrip().endswith("vidfeat: exit 0") and job.final["JobState"] == "COMPLETED", job.log[-2000:]
    assert_exactly_once(job.out, 6)


def test_the_time_limit_signal_drains_requeues_and_the_job_resumes(stopped_twice):
    """SIGTERM to the batch script (what `--signal=B:TERM@180` sends before the time limit): the job's
    first stop."""
    job = stopped_twice
    assert int(job.after_signal["Restarts"]) == 1
    assert_exactly_once(job.out, 6)
    assert "requeueing job" in job.log_after_signal and f"vidfeat: job {job.id} (restart 1)" in job.log


def test_a_running_job_requeued_by_slurm_resumes_with_every_video_once(stopped_twice):
    """`scontrol requeue` of the job running again after its first stop: its second stop."""
    job = stopped_twice
    assert int(job.after_requeue["Restarts"]) >= 2 and job.final["JobState"] == "COMPLETED"
    assert f"vidfeat: job {job.id} (restart 2)" in job.log
    assert_exactly_once(job.out, 6)
