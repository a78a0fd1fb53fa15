"""Committed outputs made by hand, without Ray or a model, for the tests of the store, the readers and the
report: the provenance columns a part carries (`PROV`), an output of many small parts (`build_output`),
and what readers see of an output (`snapshot`, compared with `assert_same`)."""
from __future__ import annotations

import numpy as np

from pipeline.read.features import load_clips, load_videos
from pipeline.store.commit import write_part
from pipeline.store.ledger import Ledger

PROV = {"checkpoint_sha256": "x", "preset": "tiny", "sampling": "4x8@30fps", "preprocessing": "p", "decode": "d",
        "fingerprint": "f", "schema_version": 1, "code_version": "0", "run_id": "r"}
PARTS, PER_PART, D, C = 24, 4, 16, 5


def build_output(out: str, parts: int = PARTS) -> None:
    """`parts` committed parts of PER_PART videos (1–4 clips each, random numbers), every 5th with a failure."""
    rng = np.random.default_rng(1)
    ledger = Ledger(out)
    for p in range(parts):
        videos, clips = [], {}
        for i in range(PER_PART):
            vid, n = f"p{p:02d}v{i}", 1 + (p + i) % 4
            clips[vid] = [{"video_id": vid, "clip_index": k, "start_s": k * 1.0, "end_s": k + 1.0, "valid_frames": 4,
                           "frame_indices": np.arange(4) + 4 * k, "embedding": rng.random(D, np.float32),
                           "logits": rng.random(C, np.float32)} for k in range(n)]
            videos.append({"video_id": vid, "uri": f"/{vid}.mp4", "num_clips": n, "duration_s": n * 1.0,
                           "embedding": rng.random(D, np.float32), "logits": rng.random(C, np.float32),
                           "probs": rng.random(C, np.float32), **PROV, "run_id": f"run{p // 8}"})
        failures = [{"video_id": f"bad{p}", "uri": "/bad", "stage": "decode", "error": "corrupt: x",
                     "run_id": "r"}] if p % 5 == 0 else []
        part = f"part-run{p // 8}-{p:05d}"
        write_part(ledger, part, videos, clips, failures, {**PROV, "run_id": f"run{p // 8}"})
        ledger.record(part, [v["video_id"] for v in videos], failures)


def build_output_on_s3(s3: dict, tmp_path, name: str, parts: int = PARTS) -> str:
    """`build_output` on local disk, copied to `s3://<bucket>/<name>` of the `s3` fixture; its URL."""
    local = str(tmp_path / "out")
    build_output(local, parts=parts)
    url = f"s3://{s3['bucket']}/{name}"
    s3["fs"].put(local, url.removeprefix("s3://"), recursive=True)
    return url


def snapshot(out: str) -> dict:
    """What readers see: ids, numbers, clip layout (Parquet and HDF5)."""
    videos, clips = load_videos(out, fields=("embedding", "probs")), load_clips(out, source="hdf5")
    h5 = load_videos(out, source="hdf5", fields=("embedding",))
    assert videos.ids == h5.ids and len(set(videos.ids)) == len(videos.ids)
    return {"ids": videos.ids, "embedding": videos.embedding, "probs": videos.probs, "offset": clips.offset,
            "clips": clips.embedding, "clip_index": clips.clip_index}


def assert_same(a: dict, b: dict) -> None:
    assert a["ids"] == b["ids"]
    for key in ("embedding", "probs", "offset", "clips", "clip_index"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
