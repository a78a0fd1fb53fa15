"""Keys are exact: a video's id and uri reach every output byte for byte, or the manifest is refused
naming the rows (DESIGN.md §5). Ids are generated to be hostile: control characters (NUL refused),
combining characters beside their precomposed twins, bidi overrides, trailing spaces, 10,000 characters."""
from __future__ import annotations

import json
import os
import random
import shutil

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.corpus import load_corpus
from pipeline.errors import ConfigError
from pipeline.read.parts import read_table
from pipeline.store.ledger import Ledger
from pipeline.run.runner import run_extract
from pipeline.read.verify import verify

from conftest import run_cli


def hostile_ids(n: int, seed: int = 0) -> list[str]:
    """`n` distinct ids no two of which are equal after any usual normalisation or truncation."""
    rng = random.Random(seed)
    fixed = ["x", "x ", "x\t", "x\x1b[2J\x1b]0;t\x07", "e\u0301", "\u00e9", "a\u202eb", "x\x7f\x85",
             "\\x00", "line\nbreak", "z" * 10_000, "z" * 9_999 + "y"]
    alphabet = [chr(c) for c in (*range(1, 32), 0x7f, 0x301, 0x200b, 0xfeff, 0x1f600)] + list("ab/.")
    extra = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(n)]
    return list(dict.fromkeys(fixed + extra))[:n]


def test_hostile_ids_are_carried_exactly_to_every_output(head_config, corpus, tmp_path):
    ids = hostile_ids(8)
    videos = [os.path.join(corpus["dir"], name) for name in corpus["good"]]
    uris = [videos[i % len(videos)] for i in range(len(ids))]
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"video_id": ids, "uri": uris}), manifest)
    out = str(tmp_path / "out")
    summary = run_extract(manifest, out, head_config, progress=False)
    assert (summary.ok, summary.failed) == (len(ids), 0)
    expected = dict(zip(ids, uris))
    rows = read_table(out, "videos", ["video_id", "uri", "num_clips"]).to_pylist()
    assert {r["video_id"]: r["uri"] for r in rows} == expected and len(rows) == len(ids)
    clip_ids = set(read_table(out, "clips", ["video_id"]).column("video_id").to_pylist())
    assert clip_ids == set(ids)
    assert hdf5_ids(out) == expected
    assert Ledger(out).load().done == set(ids)
    assert verify(out)["ok"]
    by_uri = {}
    for r in rows:                                  # the same video under two ids: the same clip count
        by_uri.setdefault(r["uri"], set()).add(r["num_clips"])
    assert all(len(counts) == 1 for counts in by_uri.values())


def hdf5_ids(out: str) -> dict[str, str]:
    found = {}
    for name in os.listdir(os.path.join(out, "hdf5")):
        with h5py.File(os.path.join(out, "hdf5", name)) as f:
            found.update(zip(f["video_id"].asstr()[()], f["uri"].asstr()[()]))
    return found


@pytest.mark.parametrize("column", ["video_id", "uri"])
def test_a_nul_in_an_id_or_uri_is_refused_naming_the_row(tmp_path, column):
    rows = {"video_id": ["a", "b", "c"], "uri": ["/a.mp4", "/b.mp4", "/c.mp4"]}
    rows[column][1] = rows[column][1] + "\x00tail"
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table(rows), manifest)
    with pytest.raises(ConfigError, match=f"NUL character in their {column}.*rows 2 "):
        load_corpus(manifest)
    result = run_cli("extract", manifest, "--out", str(tmp_path / "out"), "--preset", "tiny", "--checkpoint",
                     "random", "--no-progress")
    assert result.returncode == 2 and "rows 2" in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "out" / "run.json")


def test_text_that_is_not_unicode_is_refused_naming_the_row(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_bytes(b"uri,video_id\na.mp4,ok\nb.mp4,\xff\xfe\n")
    with pytest.raises(ConfigError, match="first bad row: 2"):
        load_corpus(str(csv))
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"uri": "a.mp4", "video_id": "x"}) + "\n" + '{"uri": "b.mp4", "video_id": "\\ud800"}\n')
    with pytest.raises(ConfigError, match="first bad row: 2"):
        load_corpus(str(jsonl))


def decode_stage_ids(rows: dict) -> list[str]:
    """The ids in the rows the Ray decode stage yields for `rows` (videos that do not exist: one failure
    row each, which carries its id like a clip row)."""
    from pipeline.config import Config
    from pipeline.run.decode_stage import decode_videos

    batch = {"row": np.arange(len(rows["uri"])), "video_id": np.array(rows["video_id"], dtype=object),
             "uri": np.array(rows["uri"], dtype=object)}
    config = Config.from_preset("tiny").replace(decode={"timeout_s": 0}).to_dict()
    out = list(decode_videos(batch, config))
    assert all(b["stage"][0] == "decode" for b in out)
    return [b["video_id"][0] for b in out]


def test_unicode_twins_and_long_ids_stay_distinct_in_a_manifest(tmp_path):
    ids = hostile_ids(40, seed=3)
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"video_id": ids, "uri": [f"/v{i}.mp4" for i in range(len(ids))]}), manifest)
    corpus = load_corpus(manifest)
    assert corpus.ids.to_pylist() == ids
    assert decode_stage_ids(corpus.table.to_pydict()) == ids      # and through the decode stage's rows
    shutil.rmtree(tmp_path)
