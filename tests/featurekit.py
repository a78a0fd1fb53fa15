"""A committed output directory of real tiny-model features, built without Ray (for the reader tests).

Videos of three visually distinct classes are generated with PyAV (64×48 at 30 fps, 1 to 3 s, so 1 to 3
clips of the tiny preset, with a per-video random period, phase, brightness and motion), decoded with
`decode_clips` in this process, embedded by the inference stage's own `ClipEmbedder.embed` with the
random-weight `tiny` model, aggregated with `aggregate_video`, and committed part by part (`write_part`,
then `Ledger.record`) like a run does.

The directory also holds one committed failure and one uncommitted part (files with no ledger record,
holding the video `GHOST`), so readers can be checked to skip what is not committed.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from pipeline.run.aggregate import aggregate_video
from pipeline.config import Config
from pipeline.decode import decode_clips
from pipeline.run.infer import ClipEmbedder
from pipeline.store.ledger import Ledger
from pipeline.store.commit import provenance, write_part
from pipeline.decode.transforms import crop

CLASSES = ("dark-horizontal", "bright-vertical", "checkerboard")
GHOST = "ghost"                       # a video in the uncommitted part: no reader may return it
WIDTH, HEIGHT, FPS = 64, 48, 30


@dataclass(frozen=True)
class FeatureKit:
    out: str                          # the output directory
    labels: str                       # csv video_id,label of every committed video (+ one unknown id)
    ids: list[str]                    # committed video ids, in commit order
    label_of: dict[str, str]          # video_id → class name
    failed: list[str]                 # ids of committed failures


def class_frames(label: str, rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """uint8 [num_frames, HEIGHT, WIDTH, 3] frames of one class, with a per-video random look and motion."""
    t = np.arange(num_frames)[:, None, None]
    y, x = np.arange(HEIGHT)[None, :, None], np.arange(WIDTH)[None, None, :]
    period, phase, speed = rng.uniform(8, 16), rng.uniform(0, 16), rng.uniform(0.2, 1.0)
    if label == "dark-horizontal":
        on = ((y + phase + speed * t) % period) < period / 2
        low, high = rng.uniform(0, 20), rng.uniform(60, 90)
    elif label == "bright-vertical":
        on = ((x + phase + speed * t) % period) < period / 2
        low, high = rng.uniform(160, 190), rng.uniform(230, 255)
    elif label == "checkerboard":
        on = (((x + 2 * speed * t) // (period / 2)) + ((y + phase) // (period / 2))) % 2 == 0
        low, high = rng.uniform(0, 30), rng.uniform(200, 255)
    else:
        raise ValueError(f"unknown class {label!r}; known: {CLASSES}")
    gray = np.where(np.broadcast_to(on, (num_frames, HEIGHT, WIDTH)), high, low)
    noise = rng.normal(0, 4, gray.shape)
    return np.clip(gray + noise, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=3)


def write_video(path: str, frames: np.ndarray, fps: int = FPS) -> str:
    """frames uint8 [T, H, W, 3] → an H.264 mp4 at `path` (libx264, yuv420p)."""
    import av

    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"crf": "18", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def tiny_config() -> Config:
    """The `tiny` preset with seeded random weights, decoding in this process (no watchdog worker)."""
    return Config.from_preset("tiny", checkpoint="random").replace(decode={"timeout_s": 0})


def extract_video(video_id: str, uri: str, config: Config, embedder: ClipEmbedder) -> tuple[dict, list[dict]]:
    """One video → (video row, clip rows), the numbers a pipeline run would commit for it."""
    decoded = list(decode_clips(uri, config, video_id=video_id))
    frames = np.stack([np.stack(crop(c.frames, config.preprocess.size, config.preprocess.crops)) for c in decoded])
    emb, logits = embedder.embed(frames)                   # all clips of the video in one batch
    clips = [{"video_id": video_id, "clip_index": c.index, "start_s": c.start_s, "end_s": c.end_s,
              "valid_frames": c.valid_frames, "frame_indices": [int(i) for i in c.frame_indices],
              "embedding": emb[j], "logits": logits[j]} for j, c in enumerate(decoded)]
    return {"video_id": video_id, "uri": uri, **aggregate_video(clips)}, clips


def build_output(root: str, per_class: int = 6, videos_per_part: int = 7, seed: int = 0) -> FeatureKit:
    """Generate `per_class` videos of each class under `root`/videos and commit their features to
    `root`/out in parts of `videos_per_part`; see the module doc for the extra failure and ghost part."""
    rng = np.random.default_rng(seed)
    config = tiny_config()
    embedder = ClipEmbedder(config.to_dict())
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    label_of = {f"{label}-{i:02d}": label for i in range(per_class) for label in CLASSES}
    events = []
    for vid, label in label_of.items():
        frames = class_frames(label, rng, num_frames=int(rng.integers(FPS, 3 * FPS)))
        uri = write_video(os.path.join(root, "videos", f"{vid}.mp4"), frames)
        events.append(extract_video(vid, uri, config, embedder))
    out = os.path.join(root, "out")
    ledger, prov = Ledger(out), provenance(config, "sha-test", "fp-test", "kit")
    failure = {"video_id": "broken", "uri": "/nowhere/broken.mp4", "stage": "decode",
               "error": "not_found: no such file", "run_id": "kit"}
    chunks = [events[i:i + videos_per_part] for i in range(0, len(events), videos_per_part)]
    for seq, chunk in enumerate(chunks):
        failures = [failure] if seq == 0 else []
        _commit(ledger, f"part-kit-{seq:05d}", chunk, failures, prov, record=True)
    ghost = extract_video(GHOST, events[0][0]["uri"], config, embedder)
    _commit(ledger, f"part-kit-{len(chunks):05d}", [ghost], [], prov, record=False)
    labels = os.path.join(root, "labels.csv")
    _write_labels(labels, {**label_of, "not-extracted": CLASSES[0]})
    return FeatureKit(out, labels, list(label_of), label_of, [failure["video_id"]])


def _commit(ledger: Ledger, part: str, events: list, failures: list[dict], prov: dict, record: bool) -> None:
    videos = [{**video, **prov} for video, _ in events]
    write_part(ledger, part, videos, {video["video_id"]: clips for video, clips in events}, failures, prov)
    if record:
        ledger.record(part, [v["video_id"] for v in videos], failures)


def _write_labels(path: str, label_of: dict[str, str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "label"])
        writer.writerows(label_of.items())


_SHARED: dict[str, FeatureKit] = {}


def shared_output(tmp_path_factory) -> FeatureKit:
    """One `build_output()` per test session, shared by every test module that asks (read-only!)."""
    if "kit" not in _SHARED:
        _SHARED["kit"] = build_output(str(tmp_path_factory.mktemp("featurekit")))
    return _SHARED["kit"]
