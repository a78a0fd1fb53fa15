"""jobs/slurm_extract.sbatch on a real Slurm (issue #21): Debian's slurm-wlm with munge, a slurmctld and
a slurmd on this machine (loopback, ports of their own), started here and stopped after. The job starts
a Ray cluster over its allocation and runs the extraction; a job told to stop the way Slurm does before
its time limit (SIGTERM to the batch script) drains, requeues itself and resumes; a running job requeued
with `scontrol requeue` resumes too; in the end every video is there exactly once.

Needs root (SlurmUser=root; else the tests skip) and the Slurm binaries (`.ci/run` installs them):
without them the tests skip with the reason, unless CI is set, where that fails."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time

import pytest

from pipeline.plan.samples import write_index_video
from pipeline.read.features import read_table

from conftest import free_port, ray_env, run_cli, stop_tree, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    ctld, slurmd = free_port(), free_port()
    conf = f"""ClusterName=vidfeattest
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
KillWait=15
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
        for proc in reversed([p for p in started if p is not None]):
            stop_tree(proc)


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


def submit(slurm, tmp_path, videos: int, frames: int = 40) -> tuple[str, str]:
    folder, out = tmp_path / "videos", str(tmp_path / "out")
    folder.mkdir()
    for i in range(videos):
        write_index_video(str(folder / f"v{i:02d}.mp4"), num_frames=frames)
    (tmp_path / "run.yaml").write_text("run:\n  commit_every: 1\n")
    env = {**slurm["env"], "VIDFEAT_SOURCE": str(folder), "VIDFEAT_OUT": out,
           "VIDFEAT_CONFIG": str(tmp_path / "run.yaml"), "VIDFEAT_PYTHON": sys.executable,
           "VIDFEAT_ARGS": "--preset tiny --checkpoint random --no-progress", "VIDFEAT_HEAD_IP": "127.0.0.1"}
    done = _run(["sbatch", "--parsable", "--nodes=1", f"--cpus-per-task={os.cpu_count()}",
                 f"--output={tmp_path}/job-%j.log", f"--chdir={ROOT}", os.path.join(ROOT, "jobs", "slurm_extract.sbatch")],
                env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0], out


def start_requeued_now(job: str, env: dict) -> None:
    """Once Slurm has requeued `job`, let it start at once: Slurm holds a requeued job back two minutes
    (against requeue loops), which says nothing about the script and would only slow the test."""
    def requeued() -> bool:
        state = job_state(job, env)
        return int(state.get("Restarts", 0)) >= 1 and state.get("JobState") == "PENDING"
    assert wait_for(requeued, timeout=300, interval=0.5), job_state(job, env)
    assert wait_for(lambda: "idle" in _run(["sinfo", "-h", "-o", "%t"], env).stdout, timeout=120, interval=0.5)
    time.sleep(2)             # a credential made in the second its job was killed counts as revoked
    _run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env)


def wait_completed(job: str, env: dict, tmp_path, timeout: float = 600) -> dict:
    assert wait_for(lambda: job_state(job, env).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
                    timeout=timeout, interval=1), job_state(job, env)
    state = job_state(job, env)
    log = "".join(open(p).read() for p in glob.glob(f"{tmp_path}/job-*.log"))
    assert state["JobState"] == "COMPLETED", (state, log[-4000:])
    return state


def assert_exactly_once(out: str, videos: int) -> None:
    ids = read_table(out, "videos", ["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == [f"v{i:02d}.mp4" for i in range(videos)]
    assert run_cli("verify", out).returncode == 0


def started_committing(out: str) -> bool:
    return bool(glob.glob(os.path.join(out, "ledger", "part-*.json")) or
                glob.glob(os.path.join(out, "ledger", "records", "*.json")))


def test_the_batch_script_runs_an_extraction_over_its_allocation(slurm, tmp_path):
    job, out = submit(slurm, tmp_path, videos=6)
    wait_completed(job, slurm["env"], tmp_path)
    assert_exactly_once(out, 6)
    log = open(glob.glob(f"{tmp_path}/job-*.log")[0]).read()
    assert f"vidfeat: job {job} (restart 0)" in log and "vidfeat: exit 0" in log


def test_the_time_limit_signal_drains_requeues_and_the_job_resumes(slurm, tmp_path):
    """SIGTERM to the batch script (what `--signal=B:TERM@180` sends before the time limit)."""
    job, out = submit(slurm, tmp_path, videos=40, frames=90)
    assert wait_for(lambda: started_committing(out), timeout=300, interval=0.2)
    assert _run(["scancel", "--batch", "--signal=TERM", job], slurm["env"]).returncode == 0
    start_requeued_now(job, slurm["env"])
    state = wait_completed(job, slurm["env"], tmp_path)
    assert int(state["Restarts"]) == 1
    assert_exactly_once(out, 40)
    log = "".join(open(p).read() for p in glob.glob(f"{tmp_path}/job-*.log"))
    assert "requeueing job" in log and f"vidfeat: job {job} (restart 1)" in log


def test_a_running_job_requeued_by_slurm_resumes_with_every_video_once(slurm, tmp_path):
    job, out = submit(slurm, tmp_path, videos=40, frames=90)
    assert wait_for(lambda: started_committing(out) and job_state(job, slurm["env"]).get("JobState") == "RUNNING",
                    timeout=300, interval=0.2)
    assert _run(["scontrol", "requeue", job], slurm["env"]).returncode == 0
    start_requeued_now(job, slurm["env"])
    state = wait_completed(job, slurm["env"], tmp_path)
    assert int(state["Restarts"]) >= 1
    assert_exactly_once(out, 40)
