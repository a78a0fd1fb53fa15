"""What a scheduler-driven nightly job needs from the output (issue #30, item 5): parts of the size
`commit_every` says, a failed compaction retried by the next run even when it has nothing to extract, a
full disk named in the one line, and nothing a dead writer staged left behind."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from pipeline.run import results
from pipeline.run.collector import VideoCollector
from pipeline.run.listener import RunListener
from pipeline.run.runner import PartWriter, RunSummary, _take, run_extract
from pipeline.store.lease import STALE_S
from pipeline.store.ledger import Ledger

from conftest import ray_env, run_cli
from partkit import PROV, assert_same, build_output, snapshot


def result_block(ids: list[str], failed: tuple[str, ...] = ()) -> pa.Table:
    """One result block finishing every video of `ids` (one clip each; those in `failed` as failure rows),
    as the inference stage hands it to the driver."""
    n, rng = len(ids), np.random.default_rng(0)
    return results.to_table({
        "row": np.arange(n), "clip_index": np.zeros(n, np.int64), "last": np.ones(n, bool),
        "start_s": np.zeros(n), "end_s": np.ones(n), "valid_frames": np.full(n, 4),
        "frame_indices": np.tile(np.arange(4), (n, 1)), "embedding": rng.random((n, 8), np.float32),
        "logits": rng.random((n, 3), np.float32), "error": np.array(["corrupt: x" if v in failed else "" for v in ids]),
        "stage": np.array(["decode" if v in failed else "" for v in ids]), "decode_s": np.zeros(n),
        "infer_s": np.zeros(n), "device": np.array(["cpu"] * n)})


def test_a_part_holds_at_most_commit_every_videos_however_many_a_block_finishes(tmp_path):
    ids = [f"v{i}" for i in range(7)]
    ledger = Ledger(str(tmp_path / "out"))
    ledger.claim()
    writer = PartWriter(ledger, RunSummary("r"), dict(PROV, run_id="r"), commit_every=2)
    collector = VideoCollector(pa.table({"video_id": ids, "uri": [f"/{v}" for v in ids]}))
    _take(result_block(ids, failed=("v3",)), collector, writer, RunListener(), writer.summary)   # as _consume does
    writer.commit()                                                                            # the run's last one
    state = ledger.load()
    sizes = [len(r["done"]) + len(r["failed"]) for r in map(ledger._read_record, ledger._json_files("ledger"))]
    assert sizes == [2, 2, 2, 1]                                  # failures count: a part is what a kill redoes
    assert state.done == set(ids) - {"v3"} and state.failures.num_rows == 1


def test_a_run_with_nothing_to_extract_compacts_what_an_earlier_run_could_not(tmp_path, tiny_config):
    """An earlier run's compaction failed (a full disk at its end: its staged files removed), leaving
    small parts; the next run, whose videos are all done, compacts them, as its log line promised."""
    out = str(tmp_path / "out")
    build_output(out, parts=6)
    ids = sorted(Ledger(out).load().done)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("video_id,uri\n" + "".join(f"{v},/{v}.mp4\n" for v in ids))
    before = snapshot(out)
    summary = run_extract(str(manifest), out, tiny_config.replace(run={"compact_target_mb": 1}), progress=False)
    assert summary.skipped == len(ids) and summary.ok == 0 and summary.upkeep_error is None
    assert len(Ledger(out).load().segments) == 1                   # compacted: six parts were one group
    assert_same(before, snapshot(out))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (this machine's tests run as root); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield str(mount)
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder: str, leave: int = 0) -> str:
    """Fill `folder`'s file system up to `leave` bytes free; the filler's path."""
    filler = os.path.join(folder, "filler")
    with open(filler, "wb") as fh:
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        fh.write(b"\0" * max(free - leave, 0))
    return filler


def temporaries(out: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(out) for f in files if f.startswith(".tmp-")]


@pytest.mark.parametrize("leave, where", [(0, ".writers"), (4096, "ledger/claims")])
def test_a_full_disk_while_claiming_names_the_file_and_leaves_nothing(small_disk, leave, where):
    out = os.path.join(small_disk, "out")
    build_output(out, parts=3)
    filler = fill(small_disk, leave)            # full, or room for the lease but not the claim
    full = run_cli("compact", out)
    assert full.returncode == 74, full.stderr
    line = full.stderr.strip().splitlines()[-1]
    assert re.search(rf"No space left on device \(file: {re.escape(out)}/{where}/[^ ]+\.json\)", line), line
    assert "the same command resumes" in line
    assert temporaries(out) == [] and not [n for n in os.listdir(f"{out}/.writers") if n.endswith(".json")]
    os.remove(filler)
    assert run_cli("compact", out).returncode == 0 and temporaries(out) == []


def scratch_of(pid: int, tmp: str) -> list[str]:
    return glob.glob(os.path.join(tmp, f"vidfeat-*-{pid}-*"))


# a compaction's local publishes, in order: its lease, its claim, what it accepted, its first index, then
# the merged files (each through <tmp>/vidfeat-compact-<pid>-*)
@pytest.mark.parametrize("nth, where", [(1, ".writers"), (2, "ledger/claims"), (5, "videos")])
def test_what_a_killed_writer_staged_is_swept_by_the_next(tmp_path, nth, where):
    out, tmp = str(tmp_path / "out"), str(tmp_path / "tmp")
    os.makedirs(tmp)
    build_output(out, parts=6)
    before = snapshot(out)
    env = {"TMPDIR": tmp, "VIDFEAT_FAILPOINTS": f"publish.staged@{nth}"}
    killed = subprocess.Popen([sys.executable, "-m", "pipeline", "compact", out, "--target-mb", "1"],
                              env={**ray_env(), **env}, stderr=subprocess.PIPE, text=True)
    assert killed.wait(timeout=300) == -9, killed.stderr.read()
    left = temporaries(out)
    assert [os.path.dirname(p) for p in left] == [os.path.join(out, where)]            # a publish cut short
    assert bool(scratch_of(killed.pid, tmp)) == (where == "videos")                    # ... and its merge folder
    planted = [os.path.join(out, sub, ".tmp-x.json-0badc0de") for sub in ("runs", "ledger", "ledger/index")]
    for path in planted:                                        # as a run killed while recording would leave
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    for path in left:                                           # five minutes later, by the store's clock
        os.utime(path, (os.stat(path).st_atime, os.stat(path).st_mtime - STALE_S - 1))
    done = run_cli("compact", out, "--target-mb", "1", env_extra={"TMPDIR": tmp})
    assert done.returncode == 0, done.stderr
    assert temporaries(out) == [] and scratch_of(killed.pid, tmp) == []
    assert_same(before, snapshot(out))


def test_a_starting_writers_temporary_is_not_swept(tmp_path):
    """A claim or a lease being published right now (a writer starting) is not cut short: only those older
    than a lease's staleness go."""
    out = str(tmp_path / "out")
    build_output(out, parts=2)
    fresh = [os.path.join(out, sub, ".tmp-00000009.json-0badc0de") for sub in ("ledger/claims", ".writers")]
    for path in fresh:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    assert run_cli("compact", out, "--target-mb", "1").returncode == 0
    assert sorted(temporaries(out)) == sorted(fresh)
