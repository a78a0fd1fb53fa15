"""Exact cosine search (pipeline.read.search): against brute force, self-exclusion, the CLI, class names."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from featurekit import GHOST, shared_output
from pipeline.errors import ConfigError
from pipeline.read.features import load_videos
from pipeline.read.search import VideoIndex, rank_classes, read_class_names, top_classes
from pipeline.cli.search import add_search_arguments, cmd_search


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return shared_output(tmp_path_factory)


def brute_force(emb: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ unit.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.fixture
def random_index():
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((50, 16)).astype(np.float32) * rng.uniform(0.1, 10, (50, 1)).astype(np.float32)
    ids = [f"v{i:02d}" for i in range(50)]
    return ids, emb, VideoIndex(ids, emb, [f"/videos/{i}.mp4" for i in ids], device="cpu",
                                query_batch=3, chunk_rows=7)      # chunk and batch edges everywhere


@pytest.fixture(params=["index @ queriesT", "queries @ indexT"])
def orientation(request, monkeypatch):
    """Both ways the scores are multiplied (pipeline.read.search._cosines picks one by batch size)."""
    monkeypatch.setattr("pipeline.read.search.SKINNY", 1024 if request.param.startswith("index") else 0)


def test_search_equals_brute_force_across_chunks(random_index, orientation):
    ids, emb, index = random_index
    queries = np.random.default_rng(2).standard_normal((10, 16)).astype(np.float32)
    hits = index.search(queries, k=5)
    rows, scores = brute_force(emb, queries, 5)
    np.testing.assert_array_equal(hits.indices, rows)
    np.testing.assert_allclose(hits.scores, scores, atol=1e-5)
    assert hits.ids[0] == [ids[r] for r in rows[0]] and hits.uris[0][0] == f"/videos/{ids[rows[0, 0]]}.mp4"
    assert hits.scores.dtype == np.float32 and hits.indices.dtype == np.int64
    single = index.search(queries[0], k=5)                                     # one query as [D]
    np.testing.assert_array_equal(single.indices, rows[:1])
    as_torch = index.search(torch.from_numpy(queries).double(), k=5)            # torch, any float dtype
    np.testing.assert_array_equal(as_torch.indices, rows)


def test_search_ids_leaves_out_the_query_itself(random_index, orientation):
    ids, emb, index = random_index
    hits = index.search_ids(ids[:12], k=4)
    rows, _ = brute_force(emb, emb[:12], 5)
    for q in range(12):
        assert ids[q] not in hits.ids[q]
        np.testing.assert_array_equal(hits.indices[q], [r for r in rows[q] if r != q][:4])


def test_a_duplicate_under_another_id_is_a_hit(random_index):
    ids, emb, _ = random_index
    index = VideoIndex(ids + ["copy"], np.vstack([emb, emb[3:4] * 2]), device="cpu", chunk_rows=7)
    hits = index.search_ids([ids[3]], k=3)
    assert hits.ids[0][0] == "copy" and hits.scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_k_is_capped_at_what_remains(random_index):
    ids, _, index = random_index
    assert index.search_ids([ids[0]], k=500).indices.shape == (1, len(ids) - 1)
    assert index.search(np.ones((2, 16), np.float32), k=500).indices.shape == (2, len(ids))


def test_zero_vectors_score_zero_not_nan(random_index):
    _, _, index = random_index
    hits = index.search(np.zeros((1, 16), np.float32), k=3)
    assert np.all(hits.scores == 0)


def test_unknown_id_and_wrong_dimension_are_clear_errors(random_index):
    _, _, index = random_index
    with pytest.raises(ConfigError, match="no-such-video"):
        index.search_ids(["v01", "no-such-video"], k=2)
    with pytest.raises(ConfigError, match="8 dimensions, the index 16"):
        index.search(np.ones((1, 8), np.float32))


def test_neighbours_on_real_features_share_the_class(kit):
    index = VideoIndex.from_output(kit.out)
    assert len(index) == len(kit.ids) and GHOST not in index.ids
    hits = index.search_ids(kit.ids, k=1)
    same = np.mean([kit.label_of[h[0]] == kit.label_of[q] for q, h in zip(kit.ids, hits.ids)])
    assert same >= 0.8
    hdf5 = VideoIndex.from_output(kit.out, source="hdf5").search_ids(kit.ids, k=1)
    assert hdf5.ids == hits.ids


# --- classes ------------------------------------------------------------------------------------------

def test_top_classes_from_probs_with_optional_names(kit, tmp_path):
    names = tmp_path / "names.csv"
    names.write_text("class_index,name\n0,open a jar\n3,tie a knot\n")
    assert read_class_names(str(names)) == {0: "open a jar", 3: "tie a knot"}
    probs = load_videos(kit.out, fields=("probs",)).probs[0]
    top = top_classes(kit.out, kit.ids[0], k=4, class_names=str(names))
    assert [c["class_index"] for c in top] == np.argsort(-probs, kind="stable")[:4].tolist()
    assert [c["prob"] for c in top] == sorted((c["prob"] for c in top), reverse=True)
    assert all(c["name"] == {0: "open a jar", 3: "tie a knot"}.get(c["class_index"]) for c in top)
    assert [c["name"] for c in rank_classes(np.array([0.1, 0.7, 0.2]), 2)] == [None, None]


def test_class_names_without_header_and_a_bad_row(tmp_path):
    path = tmp_path / "names.csv"
    path.write_text("5,stir\n7,whisk, gently\n")
    assert read_class_names(str(path)) == {5: "stir", 7: "whisk, gently"}
    path.write_text("class_index,name\nseven,whisk\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_class_names(str(path))


# --- CLI ----------------------------------------------------------------------------------------------

def run_search(capsys, *argv) -> str:
    ap = argparse.ArgumentParser()
    add_search_arguments(ap)
    assert cmd_search(ap.parse_args([str(a) for a in argv])) == 0
    return capsys.readouterr().out


def test_cli_by_video_id_json(kit, capsys):
    report = json.loads(run_search(capsys, kit.out, "--video-id", kit.ids[0], "--top", 3, "--json"))
    assert report["videos"] == len(kit.ids)
    (query,) = report["queries"]
    assert query["query"] == kit.ids[0] and [h["rank"] for h in query["hits"]] == [1, 2, 3]
    expected = VideoIndex.from_output(kit.out).search_ids([kit.ids[0]], 3)
    assert [h["video_id"] for h in query["hits"]] == expected.ids[0]
    assert [h["uri"] for h in query["hits"]] == expected.uris[0]


def test_cli_text_output_with_class_names(kit, capsys, tmp_path):
    names = tmp_path / "names.csv"
    names.write_text("class_index,name\n" + "".join(f"{c},class number {c}\n" for c in range(10)))
    out = run_search(capsys, kit.out, "--video-id", kit.ids[1], "--top", 2, "--classes", names, "--top-classes", 1)
    lines = out.splitlines()
    assert lines[0] == f"query {kit.ids[1]}:" and len(lines) == 1 + 2 * 2
    assert "class number" in lines[2] and kit.ids[1] not in "".join(lines[1:])


def test_cli_query_files(kit, capsys, tmp_path):
    ids_file = tmp_path / "queries.txt"
    ids_file.write_text(f"{kit.ids[0]}\n\n{kit.ids[5]}\n")
    by_ids = json.loads(run_search(capsys, kit.out, "--query-file", ids_file, "--top", 2, "--json"))
    assert [q["query"] for q in by_ids["queries"]] == [kit.ids[0], kit.ids[5]]
    vectors = tmp_path / "queries.npy"
    np.save(vectors, load_videos(kit.out).embedding[[0, 5]])
    by_vectors = json.loads(run_search(capsys, kit.out, "--query-file", vectors, "--top", 3, "--json"))
    assert [q["query"] for q in by_vectors["queries"]] == ["#0", "#1"]
    assert by_vectors["queries"][0]["hits"][0]["video_id"] == kit.ids[0]        # a vector query finds itself
    assert [h["video_id"] for h in by_vectors["queries"][1]["hits"][1:]] == \
        [h["video_id"] for h in by_ids["queries"][1]["hits"]]


def test_cli_unknown_id_names_it(kit, capsys):
    with pytest.raises(ConfigError, match="not-a-video"):
        run_search(capsys, kit.out, "--video-id", "not-a-video")
    with pytest.raises(ConfigError, match=GHOST):
        run_search(capsys, kit.out, "--video-id", GHOST)                       # uncommitted: unknown


def test_a_read_only_array_is_taken_without_a_warning(recwarn):
    emb = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    emb.flags.writeable = False                         # as numpy views of Arrow buffers come
    hits = VideoIndex([f"v{i}" for i in range(5)], emb, device="cpu").search(emb[:1], k=1)
    assert hits.ids == [["v0"]] and not [w for w in recwarn if "not writable" in str(w.message)]
