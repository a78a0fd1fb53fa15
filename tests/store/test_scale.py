"""Corpus scale without Ray: manifests as columns (bad rows named), the ledger's consolidated index (a load
costs the same few requests however many parts exist; kills between fold steps and a damaged index), and
the feed's read tasks (a bounded number of tasks whatever the corpus size, every video exactly once)."""
from __future__ import annotations

import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.corpus import load_corpus
from pipeline.errors import ConfigError
from pipeline.run.feed import MAX_TASKS, RAMP_REPEAT, VideoSource, task_sizes
from pipeline.store.ledger import FOLD_EVERY, Ledger
from pipeline.store.ledger_state import LedgerState, replay

from conftest import run_cli


# --- manifests ------------------------------------------------------------------------------------------

def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_manifest_problems_name_the_rows(tmp_path):
    with pytest.raises(ConfigError, match=r"'a' \(rows 1, 4\)"):
        load_corpus(write(tmp_path / "d.csv", "video_id,uri\na,x.mp4\nb,y.mp4\nc,z.mp4\na,w.mp4\n"))
    with pytest.raises(ConfigError, match=r"2 row\(s\) have no uri: rows 2, 3"):
        load_corpus(write(tmp_path / "n.jsonl", '{"uri": "a.mp4"}\n{"uri": null}\n{"uri": "  "}\n'))
    with pytest.raises(ConfigError, match=r"no 'uri' column \(columns: \['path'\]\)"):
        load_corpus(write(tmp_path / "m.csv", "path\na.mp4\n"))
    with pytest.raises(ConfigError, match=r"first bad row: 3, .*CSV parse error: Expected 2 columns, got 3"):
        load_corpus(write(tmp_path / "bad.csv", "uri,video_id\na.mp4,1\nc.mp4,2\nb.mp4,2,3\n"))
    with pytest.raises(ConfigError, match=r"first bad row: 2, .*JSON parse error"):
        load_corpus(write(tmp_path / "bad.jsonl", '{"uri": "a.mp4"}\n{"uri": "b.mp4"\n'))


def test_manifest_ids_and_uris_resolve_as_columns(tmp_path):
    path = write(tmp_path / "m.csv", "video_id,uri\n,sub/a.mp4\nkeep,/abs/b.mp4\n,s3://bucket/c.mp4\n")
    table = load_corpus(path).table.to_pylist()
    assert table == [{"video_id": "sub/a.mp4", "uri": f"{tmp_path}/sub/a.mp4"},
                     {"video_id": "keep", "uri": "/abs/b.mp4"},
                     {"video_id": "s3://bucket/c.mp4", "uri": "s3://bucket/c.mp4"}]


def test_a_large_parquet_manifest_stays_columnar(tmp_path):
    n = 200_000
    path = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"uri": [f"videos/{i:07d}.mp4" for i in range(n)]}), path)
    corpus = load_corpus(path)
    assert len(corpus) == n and corpus.ids[n - 1].as_py() == f"videos/{n - 1:07d}.mp4"
    assert isinstance(corpus.table, pa.Table)


# --- the ledger's index ---------------------------------------------------------------------------------

def fill(ledger: Ledger, parts: int, per_part: int = 3, prefix: str = "a") -> None:
    for p in range(parts):
        ids = [f"{prefix}{p}-{i}" for i in range(per_part)]
        ledger.record(f"part-{prefix}-{p:05d}", ids[1:], [{"video_id": ids[0], "uri": "/x", "stage": "decode",
                                                           "error": f"corrupt: part {p}"}])


def same_state(a: LedgerState, b: LedgerState) -> bool:
    return (a.done == b.done and a.failed == b.failed and a.segments == b.segments)


class Counting:
    """Wraps a Ledger's file system and counts the calls that become storage requests."""

    def __init__(self, fs):
        self.fs, self.calls = fs, {"ls": 0, "open": 0}

    def ls(self, *args, **kwargs):
        self.calls["ls"] += 1
        return self.fs.ls(*args, **kwargs)

    def open(self, *args, **kwargs):
        self.calls["open"] += 1
        return self.fs.open(*args, **kwargs)

    def cat_file(self, *args, **kwargs):           # a whole small object read: one request, like an open
        self.calls["open"] += 1
        return self.fs.cat_file(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_load_costs_the_same_requests_however_many_parts_were_committed(tmp_path):
    costs = {}
    for parts in (10, 2 * FOLD_EVERY):
        ledger = Ledger(str(tmp_path / f"out{parts}"))
        fill(ledger, parts)
        ledger.fold()
        fill(ledger, 3, prefix="new")                      # a crashed run's records, not folded yet
        counted = Ledger(ledger.out)
        counted.fs = Counting(counted.fs)
        state = counted.load()
        assert len(state.done) == 2 * (parts + 3) and len(state.unfolded) == 3
        costs[parts] = counted.fs.calls
    # ls: the pending records, the claims, the index folder; open: the index and the 3 pending records
    assert costs[10] == costs[2 * FOLD_EVERY] == {"ls": 3, "open": 1 + 3}, costs


def test_fold_keeps_the_state_and_archives_the_records(tmp_path):
    ledger = Ledger(str(tmp_path))
    fill(ledger, 5)
    ledger.record("part-b-00000", ["a0-0"], [])            # a later success clears a failure
    before = ledger.load()
    folded = ledger.fold()
    assert same_state(before, folded) and same_state(before, ledger.load())
    assert not [n for n in os.listdir(tmp_path / "ledger") if n.endswith(".json")]
    assert len(os.listdir(tmp_path / "ledger" / "records")) == 6
    assert os.listdir(tmp_path / "ledger" / "index") == ["index-00000000-00000000.parquet"]
    assert "a0-0" in folded.done and "a0-0" not in folded.failed and "a1-0" in folded.failed


@pytest.mark.parametrize("point", ["fold.index", "fold.records"])
def test_a_fold_killed_between_its_steps_loads_the_same(tmp_path, point):
    out = str(tmp_path / "out")
    ledger = Ledger(out)
    fill(ledger, 4)
    before = ledger.load()
    script = f"from pipeline.store.ledger import Ledger; Ledger({out!r}).fold()"
    killed = run_cli_python(script, env_extra={"VIDFEAT_FAILPOINTS": point})
    assert killed.returncode == -9, killed.stderr
    assert same_state(before, ledger.load())
    assert same_state(before, ledger.fold()) and same_state(before, Ledger(out).load())


def run_cli_python(code: str, env_extra: dict):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env_extra}, capture_output=True,
                          text=True, timeout=120)


def test_a_damaged_index_is_detected_and_rebuilt_from_the_records(tmp_path, caplog):
    ledger = Ledger(str(tmp_path))
    fill(ledger, 6)
    before = ledger.fold()
    fill(ledger, 2, prefix="late")
    index = ledger.index_files()[-1]
    with open(index, "r+b") as fh:                          # half-written: its tail is missing
        fh.truncate(os.path.getsize(index) // 2)
    state = ledger.load()                                   # a reader: rebuilt in memory, nothing written
    assert "is damaged" in caplog.text and "rebuilt from" in caplog.text and "in memory" in caplog.text
    assert state.done == before.done | {f"late{p}-{i}" for p in range(2) for i in (1, 2)}
    assert ledger.index_files() == [index]
    repaired = ledger.claim()                               # a writer publishes the rebuilt index
    assert same_state(repaired, state) and ledger.index_files() != [index] and len(ledger.index_files()) == 1
    assert same_state(state, Ledger(str(tmp_path)).load())


def test_an_index_whose_counts_disagree_is_rebuilt(tmp_path, caplog):
    ledger = Ledger(str(tmp_path))
    fill(ledger, 3)
    ledger.fold()
    index = ledger.index_files()[-1]
    table = pq.read_table(index)
    meta = dict(table.schema.metadata)
    meta[b"counts"] = json.dumps({"done": 1, "failed": 3, "segment": 3, "record": 3}).encode()
    pq.write_table(table.replace_schema_metadata(meta), index)
    assert len(ledger.load().done) == 6 and "is damaged" in caplog.text


def test_replay_is_idempotent_and_order_independent_for_compactions():
    part = {"part": "p1", "committed_at": 2.0, "done": ["v"], "failed": []}
    merge = {"kind": "compaction", "part": "c", "committed_at": 1.0, "segments": ["p1-c"], "replaces": ["p1"]}
    state = replay(LedgerState(), [merge, part])             # clock skew: the merge sorts first
    assert state.segments == {"p1-c"} and replay(state, [part, merge]) is state


# --- the feed -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,slots", [(1, 2), (7, 2), (1000, 2), (20_000, 8), (1_220_000, 2), (1_220_000, 600),
                                     (1_220_000, 4000)])
def test_task_sizes_cover_every_video_in_a_bounded_number_of_tasks(n, slots):
    sizes = task_sizes(n, slots)
    assert sum(sizes) == n and min(sizes) >= 1
    steady = max(sizes)
    ramp = 2 * RAMP_REPEAT * max(1, math.ceil(math.log2(steady)))
    assert len(sizes) <= max(MAX_TASKS, 4 * slots) + ramp
    assert sizes[0] == 1 and sizes[-1] == 1                 # first parts commit soon; no long straggler
    if n >= 4 * slots:
        assert len(sizes) >= min(4 * slots, n // steady)     # enough tasks to keep every slot busy


def test_read_tasks_hand_out_the_rows_in_order_and_pickle_small(tmp_path):
    import pickle

    n = 50_000
    corpus = load_corpus(write(tmp_path / "m.csv", "uri\n" + "".join(f"v{i:06d}.mp4\n" for i in range(n))))
    tasks = VideoSource(corpus, task_sizes(n, 4)).get_read_tasks(1)
    rows = pa.concat_tables([block for t in tasks for block in t()])
    assert rows.column("video_id").to_pylist() == corpus.ids.to_pylist()
    assert max(len(pickle.dumps(t)) for t in tasks) < 20_000


def test_status_counts_from_the_index(tmp_path):
    ledger = Ledger(str(tmp_path / "out"))
    fill(ledger, 4)
    ledger.fold()
    manifest = write(tmp_path / "m.csv", "video_id,uri\na0-1,a.mp4\nnew,b.mp4\na1-0,c.mp4\n")
    done = run_cli("status", ledger.out, "--source", manifest, "--json")
    report = json.loads(done.stdout)
    assert (report["done"], report["failed"], report["pending"], report["parts"]) == (8, 4, 1, 4)
