"""Two writers that start at the same instant (issue #30, item 2): exactly one goes on, the other refuses
naming it — on local disk and on S3 (moto), whichever of the two wins.

Two `vidfeat compact` processes are held at the same point of their start (faults.py's pause points),
then released together (a barrier): at `lease.published` both leases are published before either
looks at the other's (where each once refused on seeing the other, so both refused), at `claim.create`
both have checked the newest claim and both create the same next one (the exclusive create decides).
"""
from __future__ import annotations

import fcntl
import os
import re

import pytest

from pipeline.errors import ConfigError
from pipeline.read.verify import verify
from pipeline.store.lease import WriterLease
from pipeline.store.ledger import Ledger

from conftest import ray_env, wait_for
from held import Held
from partkit import assert_same, build_output, build_output_on_s3, snapshot

REFUSED = "is being written by another run or compaction"


def race(url: str, point: str, tmp_path, env: dict) -> list[tuple[int, str, str, int]]:
    """Two compactions of `url` held at `point`, then released together: (code, stdout, stderr, pid) each."""
    barrier = str(tmp_path / "barrier")
    with open(barrier, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)                        # held: both wait at `point` (faults.py)
        env = {**ray_env(), **env, "VIDFEAT_PAUSE_BARRIER": barrier}
        held = [Held(["compact", url, "--target-mb", "1"], point, str(tmp_path / f"writer{i}"), env)
                for i in range(2)]
        paused = [os.path.join(h.pauses, f"{point}.paused") for h in held]
        assert wait_for(lambda: all(map(os.path.exists, paused)) or any(h.ended() for h in held), timeout=300)
        assert not any(h.ended() for h in held), [h.finish() for h in held]
    return [(*h.finish(), h.proc.pid) for h in held]            # the lock let go: both woke at once


def assert_one_went_on(results, url: str, before) -> None:
    codes = sorted(code for code, *_ in results)
    assert codes == [0, 2], [(code, err[-1500:]) for code, _, err, _ in results]
    (_, _, _, winner), (_, _, lost, _) = sorted(results, key=lambda r: r[0])
    assert REFUSED in lost and re.search(rf"\bpid {winner}\b", lost), lost       # names the one that went on
    assert "wait for it to end, then run again" in lost
    assert len(Ledger(url).load().segments) == 1                                # the winner compacted
    assert_same(before, snapshot(url))
    assert verify(url)["ok"]


@pytest.mark.parametrize("point", ["lease.published", "claim.create"])
def test_two_writers_starting_together_on_local_disk(tmp_path, point):
    out = str(tmp_path / "out")
    build_output(out, parts=6)
    before = snapshot(out)
    assert_one_went_on(race(out, point, tmp_path, {}), out, before)
    assert not [n for n in os.listdir(os.path.join(out, ".writers")) if n.endswith(".json")]     # both released


@pytest.mark.parametrize("point", ["lease.published", "claim.create"])
def test_two_writers_starting_together_on_s3(s3, tmp_path, point):
    url = build_output_on_s3(s3, tmp_path, f"race-{point.replace('.', '-')}", parts=6)
    before = snapshot(url)
    assert_one_went_on(race(url, point, tmp_path, s3["env"]), url, before)
    assert not [p for p in Ledger(url).ls(".writers") if p.endswith(".json")]  # both released (markers stay)


def test_a_writer_that_has_not_claimed_yet_does_not_make_the_other_refuse(tmp_path):
    """The race above, in a fixed order: this writer's lease is published and alive, not yet claimed,
    when another starts. The other goes on (each refusing on the other's lease was the bug: both
    refused), and this one, claiming after it, refuses naming it."""
    out = str(tmp_path / "out")
    build_output(out, parts=6)
    ledger = Ledger(out)
    with WriterLease(ledger) as lease:
        other = Held(["compact", out, "--target-mb", "1"], "claim.epoch", str(tmp_path / "other"))
        assert wait_for(lambda: os.path.exists(os.path.join(other.pauses, "claim.epoch.paused")) or other.ended())
        assert not other.ended(), other.finish()                       # it claimed: it goes on
        with pytest.raises(ConfigError, match=rf"{REFUSED} \(pid {other.proc.pid} "):
            ledger.claim(lease)
        open(os.path.join(other.pauses, "claim.epoch.go"), "w").close()
        code, _, err = other.finish()
    assert code == 0, err
    assert len(Ledger(out).load().segments) == 1 and verify(out)["ok"]
