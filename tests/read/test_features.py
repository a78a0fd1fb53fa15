"""Readers of committed features (pipeline.read.features) on a real tiny-model output directory (featurekit)."""
from __future__ import annotations

import pickle

import fsspec
import numpy as np
import pytest
import torch

from featurekit import CLASSES, GHOST, shared_output
from pipeline.errors import ConfigError
from pipeline.read.features import (CLIP_FIELDS, SOURCES, VIDEO_FIELDS, load_clips, load_videos, lookup_videos,
                                    video_embeddings)
from pipeline.read.parts import h5_parts, part_urls, read_table
from pipeline.read.task_dataset import TaskDataset, collate, read_labels


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return shared_output(tmp_path_factory)


def assert_same_fields(a, b, names):
    for name in names:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# --- what is read -------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
def test_only_committed_videos_in_commit_order(kit, source):
    videos = load_videos(kit.out, source)
    assert videos.ids == kit.ids and GHOST not in videos.ids
    assert len(set(videos.ids)) == len(videos.ids)
    assert load_clips(kit.out, source).ids == kit.ids
    assert not any(GHOST in url for url in part_urls(kit.out, "hdf5"))           # the ghost part has no record
    assert len(part_urls(kit.out, "hdf5")) == len(part_urls(kit.out, "videos")) == 3


def test_parquet_and_hdf5_hold_the_same_numbers(kit):
    pq_videos, h5_videos = (load_videos(kit.out, s, VIDEO_FIELDS) for s in SOURCES)
    assert pq_videos.uris == h5_videos.uris
    assert_same_fields(pq_videos, h5_videos, ("num_clips", *VIDEO_FIELDS))
    pq_clips, h5_clips = (load_clips(kit.out, s, CLIP_FIELDS) for s in SOURCES)
    assert_same_fields(pq_clips, h5_clips, ("offset", "clip_index", "start_s", "end_s", "valid_frames", *CLIP_FIELDS))


def test_shapes_dtypes_and_clip_grouping(kit):
    videos = load_videos(kit.out, fields=VIDEO_FIELDS)
    clips = load_clips(kit.out, fields=CLIP_FIELDS)
    n, m = len(kit.ids), int(videos.num_clips.sum())
    assert videos.embedding.shape == (n, 64) and videos.logits.shape == videos.probs.shape == (n, 10)
    assert clips.embedding.shape == (m, 64) and clips.logits.shape == (m, 10)
    assert {a.dtype for a in (videos.embedding, videos.probs, clips.embedding)} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(np.diff(clips.offset), videos.num_clips)
    assert len(set(videos.num_clips.tolist())) > 1                               # variable lengths exercised
    for i, vid in enumerate(clips.ids):
        rows = slice(clips.offset[i], clips.offset[i + 1])
        assert clips.clip_index[rows].tolist() == list(range(videos.num_clips[i]))
        np.testing.assert_allclose(clips.of(vid).mean(axis=0), videos.embedding[i], atol=1e-6)
    assert [len(s) for s in clips.sequences()] == videos.num_clips.tolist()


def test_tensors_share_memory_with_the_arrays(kit):
    videos = load_videos(kit.out)
    t = videos.tensor()
    assert t.dtype == torch.float32 and t.shape == videos.embedding.shape
    assert t.data_ptr() == videos.embedding.ctypes.data
    with pytest.raises(ConfigError, match="logits"):
        videos.tensor("logits")                                                   # not loaded


def test_existing_readers_keep_their_signatures(kit):
    ids, emb = video_embeddings(kit.out)
    assert ids == kit.ids and emb.shape == (len(ids), 64)
    table = read_table(kit.out, "videos", ["video_id", "num_clips"])
    assert table.column_names == ["video_id", "num_clips"] and table.num_rows == len(kit.ids)
    assert read_table(kit.out, "failures").column("video_id").to_pylist() == kit.failed


def test_lookup_reads_the_rows_asked_for_in_order(kit):
    wanted = [kit.ids[-1], kit.ids[0]]
    rows = lookup_videos(kit.out, wanted, ("probs", "embedding"))
    full = load_videos(kit.out, fields=("probs", "embedding"))
    assert rows.ids == wanted
    np.testing.assert_array_equal(rows.probs, full.probs[[len(kit.ids) - 1, 0]])
    with pytest.raises(ConfigError, match=GHOST):
        lookup_videos(kit.out, [kit.ids[0], GHOST])


def test_empty_output_directory(tmp_path):
    for source in SOURCES:
        assert len(load_videos(str(tmp_path), source)) == 0
        clips = load_clips(str(tmp_path), source)
        assert clips.ids == [] and clips.offset.tolist() == [0]


def test_unknown_source_or_field_is_a_clear_error(kit):
    with pytest.raises(ConfigError, match="source"):
        load_videos(kit.out, source="csv")
    with pytest.raises(ConfigError, match="probs"):
        load_clips(kit.out, fields=("probs",))


def test_any_fsspec_url(kit):
    """The same directory under memory:// reads the same (HDF5 parts read whole, not mapped)."""
    fs = fsspec.filesystem("memory")
    fs.put(kit.out, "/featurekit-copy/out", recursive=True)
    url = "memory://featurekit-copy/out"
    try:
        assert part_urls(url, "videos")[0].startswith("memory://")
        for source in SOURCES:
            assert_same_fields(load_videos(url, source, VIDEO_FIELDS), load_videos(kit.out, source, VIDEO_FIELDS),
                               ("ids", *VIDEO_FIELDS))
            assert_same_fields(load_clips(url, source), load_clips(kit.out, source), ("offset", "embedding"))
    finally:
        fs.rm("/featurekit-copy", recursive=True)


# --- memory mapping -----------------------------------------------------------------------------------

def test_local_hdf5_is_memory_mapped_copy_on_write(kit):
    part = h5_parts(kit.out)[0]
    emb = part.array("clips/embedding")
    assert isinstance(emb, np.memmap) and emb.dtype == np.float32
    before = emb[0].copy()
    emb[0] = 42.0                                                                 # private page, not the file
    assert np.array_equal(h5_parts(kit.out)[0].array("clips/embedding")[0], before)
    emb[0] = before


def test_a_single_part_loads_as_its_memory_map(tmp_path, kit):
    """One part: load_clips returns the map itself (no copy); several parts are concatenated."""
    for sub, name in (("hdf5", "part-kit-00000.h5"), ("ledger", "part-kit-00000.json")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / name).write_bytes(open(f"{kit.out}/{sub}/{name}", "rb").read())
    assert isinstance(load_clips(str(tmp_path), "hdf5").embedding, np.memmap)
    assert isinstance(load_videos(str(tmp_path), "hdf5").embedding, np.memmap)
    assert not isinstance(load_clips(kit.out, "hdf5").embedding, np.memmap)


# --- labels and the torch Dataset ---------------------------------------------------------------------

def test_labels_map_to_sorted_class_indices(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("video_id,label\na,10\nb,2\nc,2\nd,-1\n")
    labels = read_labels(str(path))
    assert labels.classes == ["-1", "2", "10"]                                    # numeric order, not "10" < "2"
    assert labels.class_index == {"-1": 0, "2": 1, "10": 2}
    path.write_text("video_id,label\na,walk\nb,Cook\nc,bake\n")
    assert read_labels(str(path)).classes == ["Cook", "bake", "walk"]
    rows, y = read_labels(str(path)).select(["x", "c", "a"])
    assert rows.tolist() == [1, 2] and y.tolist() == [1, 2]
    assert read_labels(str(path), classes=["walk", "bake", "Cook", "swim"]).class_index["walk"] == 0


@pytest.mark.parametrize("text, match", [
    ("id,class\na,x\n", "video_id,label"),
    ("video_id,label\na,x\na,y\n", "two labels"),
])
def test_bad_labels_files(tmp_path, text, match):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_labels(str(path))


def test_label_outside_the_given_classes(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("video_id,label\na,x\n")
    with pytest.raises(ConfigError, match="'x'"):
        read_labels(str(path), classes=["y"])


@pytest.mark.parametrize("source", SOURCES)
def test_task_dataset_items(kit, source):
    ds = TaskDataset(kit.out, kit.labels, source=source)
    clips = load_clips(kit.out)
    videos = load_videos(kit.out)
    assert ds.classes == sorted(CLASSES) and len(ds) == len(kit.ids)
    assert ds.missing == ["not-extracted"] and ds.unlabelled == 0
    for i in (0, len(ds) - 1):
        item = ds[i]
        vid = item["video_id"]
        assert item["clips"].dtype == torch.float32 and item["label"].dtype == torch.int64
        np.testing.assert_array_equal(item["clips"].numpy(), clips.of(vid))
        np.testing.assert_array_equal(item["video"].numpy(), videos.embedding[videos.row[vid]])
        assert ds.classes[int(item["label"])] == kit.label_of[vid]
    assert [ds.classes[c] for c in ds.targets()] == [kit.label_of[v] for v in kit.ids]


def test_task_dataset_leaves_out_unlabelled_videos(kit, tmp_path):
    labels = tmp_path / "some.csv"
    labels.write_text("video_id,label\n" + "".join(f"{v},{kit.label_of[v]}\n" for v in kit.ids[:5]))
    ds = TaskDataset(kit.out, str(labels))
    assert len(ds) == 5 and ds.unlabelled == len(kit.ids) - 5 and ds.missing == []
    assert [ds[i]["video_id"] for i in range(5)] == kit.ids[:5]


def test_task_dataset_pickles_for_dataloader_workers(kit):
    ds = TaskDataset(kit.out, kit.labels)
    ds[0]                                                                         # opens maps
    clone = pickle.loads(pickle.dumps(ds))
    assert all(not p._arrays for p in clone.parts)                                # maps re-open in the worker
    assert torch.equal(clone[3]["clips"], ds[3]["clips"])


def test_collate_pads_and_masks(kit):
    ds = TaskDataset(kit.out, kit.labels)
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items)
    lengths = [len(it["clips"]) for it in items]
    b, longest = len(items), max(lengths)
    assert batch["clips"].shape == (b, longest, 64) and batch["mask"].shape == (b, longest)
    assert batch["lengths"].tolist() == lengths and batch["mask"].sum(dim=1).tolist() == lengths
    assert batch["label"].shape == (b,) and batch["video"].shape == (b, 64) and batch["video_id"] == kit.ids
    for i, n in enumerate(lengths):
        assert torch.equal(batch["clips"][i, :n], items[i]["clips"])
        assert not batch["clips"][i, n:].any() and not batch["mask"][i, n:].any()
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate, shuffle=False)
    assert sum(len(x["label"]) for x in loader) == len(ds)


def test_readers_that_call_each_other_share_one_retry_layer():
    from pipeline.read.parts import READ_ATTEMPTS, consistent

    calls = {"inner": 0, "outer": 0}

    @consistent
    def inner():
        calls["inner"] += 1
        raise FileNotFoundError("replaced by a compaction")

    @consistent
    def outer():
        calls["outer"] += 1
        return inner()

    with pytest.raises(FileNotFoundError):
        outer()
    assert calls == {"inner": READ_ATTEMPTS, "outer": READ_ATTEMPTS}      # not READ_ATTEMPTS² tries


def test_verify_lists_each_folder_once_and_loads_the_ledger_only_to_confirm_it(kit, monkeypatch):
    from pipeline.read.verify import verify
    from pipeline.store.ledger import Ledger

    loads, listings = [], []
    load, ls = Ledger.load, Ledger.ls
    monkeypatch.setattr(Ledger, "load", lambda self, *a, **k: loads.append(1) or load(self, *a, **k))
    monkeypatch.setattr(Ledger, "ls", lambda self, sub, *a, **k: listings.append(sub) or ls(self, sub, *a, **k))
    report = verify(kit.out)
    assert report["ok"] and report["videos"] > 0
    assert len(loads) == 2                                # the state, and the load that confirms the listing
    data = [sub for sub in listings if sub in ("videos", "clips", "hdf5", "failures")]
    assert sorted(data) == ["clips", "failures", "hdf5", "videos"]          # each data folder listed once
