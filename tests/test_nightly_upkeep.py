"""What a scheduler-driven nightly job needs from the output (issue #30, item 5): parts of the size
`commit_every` says, a failed compaction retried by the next run even when it has nothing to extract, a
full disk named in the one line, and nothing a dead writer staged left behind."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.run import results
from pipeline.run.collector import VideoCollector
from pipeline.run.listener import RunListener
from pipeline.run.runner import PartWriter, RunSummary, _take, run_extract
from pipeline.store.ledger import Ledger

from test_compact import assert_same, build_output, snapshot
from test_reliability import PROV


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
