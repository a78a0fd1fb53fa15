"""Odd manifests (issue #20 #6–7): refused or warned about with the rows named, never silently changed."""
from __future__ import annotations

import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.corpus import load_corpus
from pipeline.errors import ConfigError

from conftest import run_cli


def test_a_uri_column_twice_is_refused_by_name(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,video_id,uri\n/a.mp4,a,/b.mp4\n")
    with pytest.raises(ConfigError, match="2 columns named 'uri'"):
        load_corpus(str(manifest))


@pytest.mark.parametrize("ids", [[1.0, 2.5], [1.0, float("nan")]])
def test_a_float_id_column_is_refused(tmp_path, ids):
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"video_id": ids, "uri": ["/a.mp4", "/b.mp4"]}), manifest)
    with pytest.raises(ConfigError, match="holds double, not text"):
        load_corpus(manifest)


def test_integer_ids_are_kept_and_rows_without_one_are_named(tmp_path, caplog):
    manifest = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"video_id": pa.array([7, None, 9], pa.int64()), "uri": ["a.mp4", "b.mp4", "c.mp4"]}),
                   manifest)
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(manifest)
    assert corpus.ids.to_pylist() == ["7", "b.mp4", "9"]
    assert "1 row(s) give no video_id" in caplog.text and "rows 2" in caplog.text


def test_one_file_under_two_spellings_is_warned_about(tmp_path, caplog):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,video_id\n./x.mp4,a\nx.mp4,b\nfile://{tmp_path}/y.mp4,c\n{tmp_path}//y.mp4,d\n"
                        f"z.mp4,e\n")
    with caplog.at_level(logging.WARNING):
        load_corpus(str(manifest))
    assert "2 file(s) under several ids" in caplog.text
    assert "'a', 'b'" in caplog.text and "'c', 'd'" in caplog.text and "'e'" not in caplog.text


def test_a_symlink_in_a_scanned_directory_is_warned_about(tmp_path, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "real.mp4").write_bytes(b"x")
    os.symlink(videos / "real.mp4", videos / "link.mp4")
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(str(videos))
    assert len(corpus) == 2 and "'link.mp4', 'real.mp4'" in caplog.text


@pytest.mark.parametrize("source", ["empty_dir", "nothing/*.mp4"])
def test_a_source_with_no_video_is_a_usage_error_and_writes_nothing(tmp_path, source):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "nothing").mkdir()
    out = tmp_path / "out"
    result = run_cli("extract", str(tmp_path / source), "--out", str(out), "--preset", "tiny", "--checkpoint",
                     "random", "--no-progress", timeout=120)
    assert result.returncode == 2 and "holds no video" in result.stderr, result.stderr[-2000:]
    assert not out.exists()
