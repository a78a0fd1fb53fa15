"""What benchmarks/scale.py measures on: corpus-sized manifests, ledgers of many parts, synthetic outputs
(moto's S3 server: measure.moto_s3). Nothing here is timed."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import segments
from pipeline.store.commit import write_part
from pipeline.store.ledger import Ledger
from pipeline.synthetic.samples import write_index_video
from pipeline.store.publish import publish_bytes

PROV = {"checkpoint_sha256": "bench", "preset": "tiny", "sampling": "4x8@30fps", "preprocessing": "p",
        "decode": "d", "fingerprint": "f", "schema_version": 1, "code_version": "0", "run_id": "bench"}


def tiny_video(root: str) -> str:
    """One tiny generated video (one clip of the tiny preset); every manifest row may point to it."""
    path = os.path.join(root, "tiny.mp4")
    if not os.path.exists(path):
        os.makedirs(root, exist_ok=True)
        write_index_video(path, num_frames=20, fps=30.0)
    return path


def write_manifest(path: str, n: int, uri: str, prefix: str = "v", start: int = 0) -> str:
    """A Parquet manifest of `n` rows `video_id` = prefix + number, all with the same `uri`."""
    ids = pa.array([f"{prefix}{i:08d}" for i in range(start, start + n)], pa.string())
    pq.write_table(pa.table({"video_id": ids, "uri": pa.array([uri] * n, pa.string())}), path)
    return path


def fill_ledger(out: str, parts: int, per_part: int, threads: int = 16) -> Ledger:
    """`parts` part records of `per_part` done ids (v00000000 …), folded into the index (as runs leave them)."""
    ledger = Ledger(out)

    def record(p: int) -> None:
        ledger.record(f"part-bench-{p:06d}", [f"v{p * per_part + i:08d}" for i in range(per_part)], [])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(record, range(parts)))
    ledger.fold()
    return ledger


def compact_ledger(ledger: Ledger, count: int) -> None:
    """Replace the live parts by `count` merged segments, with one small stand-in file per kind each
    (what compaction leaves: the files a run's garbage collection then lists)."""
    parts = sorted(ledger.load().segments)
    per = -(-len(parts) // count)
    for k, start in enumerate(range(0, len(parts), per)):
        group = parts[start:start + per]
        name = f"{group[0]}-c20260101T000000{k:04x}"
        for sub in ("videos", "clips", "hdf5"):
            publish_bytes(b"stand-in", ledger.url(sub, segments.file_name(name, sub)))
        ledger.record_compaction(f"compaction-{name}", [name], group)
    ledger.fold()


def synthetic_output(out: str, videos: int, per_part: int = 64, dim: int = 768, classes: int = 1059,
                     clips_per_video: int = 1, seed: int = 0) -> None:
    """A committed output of `videos` videos in parts of `per_part`, with the real model's sizes."""
    rng = np.random.default_rng(seed)
    ledger = Ledger(out)
    for p in range(-(-videos // per_part)):
        ids = [f"v{i:08d}" for i in range(p * per_part, min(videos, (p + 1) * per_part))]
        rows = [{"video_id": v, "uri": f"s3://corpus/{v}.mp4", "num_clips": clips_per_video, "duration_s": 100.0,
                 "embedding": rng.standard_normal(dim, np.float32), "logits": rng.standard_normal(classes, np.float32),
                 "probs": np.full(classes, 1 / classes, np.float32), **PROV} for v in ids]
        clips = {v: [{"video_id": v, "clip_index": k, "start_s": 0.0, "end_s": 100.0, "valid_frames": 96,
                      "frame_indices": np.arange(96) * 32, "embedding": rng.standard_normal(dim, np.float32),
                      "logits": rng.standard_normal(classes, np.float32)} for k in range(clips_per_video)]
                 for v in ids}
        write_part(ledger, f"part-bench-{p:06d}", rows, clips, [], PROV)
        ledger.record(f"part-bench-{p:06d}", ids, [])
    ledger.fold()
