"""The decode stage of the Ray Data graph: a block of video rows in → one batch per clip out.

Runs as a Ray task on a CPU (fused with the read of its videos, see feed.py). Each video is decoded one
clip at a time (`pipeline.decode.decode_clips`: memory does not grow with the video's length), its
crops cut, and the clip yielded with its plan metadata. A video that cannot be decoded becomes one
failure row (`error` set, `clip_index` -1): failures are data, never exceptions, so one broken video
never stops the task's other videos. This module imports neither torch nor the model: a decode worker
stays light.

Row layout (numpy columns, one row per batch): row int64 (the video's position in the run's table of
videos to do: the driver joins on it, never on text), video_id, uri (object arrays: exact), clip_index int32, last bool, start_s,
end_s, valid_frames int32, frame_indices int64 [T], frames uint8 [crops, T, S, S, 3], error, stage,
decode_s (seconds this clip took), decode_node (the Ray node id that decoded it).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from pipeline.config import Config
from pipeline.errors import DecodeError
from pipeline.decode.transforms import FRAME_DTYPES, crop

log = logging.getLogger(__name__)


def decode_videos(batch: dict[str, np.ndarray], config: dict):
    """Decode every video row of `batch`; yield one batch per clip, or one failure batch per bad video."""
    from pipeline.decode.prefetch import Prefetcher

    cfg = decoding_config(Config.from_dict(config))
    node = ray_node_id()
    ids, uris = [str(v) for v in batch["video_id"]], [str(u) for u in batch["uri"]]
    with Prefetcher(list(zip(uris, ids))) as prefetch:        # the next remote video spools meanwhile
        for key, vid, uri in zip(batch["row"], ids, uris):
            for out in _decode_one(vid, uri, cfg, prefetch.local):
                out["row"], out["decode_node"] = np.array([key], np.int64), np.array([node], dtype=object)
                yield out


def decoding_config(cfg: Config) -> Config:
    """The config the stage decodes with: with one crop the decoder cuts the centre crop while resizing
    (`decode.centre_crop`: the same pixels, half the resize work); with several, it returns whole frames."""
    return cfg.replace(decode={"centre_crop": cfg.preprocess.crops == 1})


def _decode_one(vid: str, uri: str, cfg: Config, fetch):
    from pipeline.decode import decode_clips

    held, start = None, time.perf_counter()
    try:
        for clip in decode_clips(uri, cfg, video_id=vid, fetch=fetch):
            if held is not None:
                yield clip_batch(vid, uri, held, cfg, last=False, seconds=time.perf_counter() - start)
                start = time.perf_counter()
            held = clip
        yield clip_batch(vid, uri, held, cfg, last=True, seconds=time.perf_counter() - start)
    except DecodeError as exc:
        yield failure_batch(vid, uri, "decode", f"{exc.kind}: {exc.reason}", cfg)
    except Exception as exc:                                   # noqa: BLE001 - a bug must not stop the run
        log.exception("unexpected error decoding %s", vid)
        yield failure_batch(vid, uri, "decode", f"unexpected: {type(exc).__name__}: {exc}", cfg)


def clip_batch(vid: str, uri: str, clip, cfg: Config, last: bool, seconds: float) -> dict[str, np.ndarray]:
    """One decoded clip as a one-row batch: its crops [1, crops, T, S, S, 3] and plan metadata."""
    views = crop(clip.frames, cfg.preprocess.size, cfg.preprocess.crops)
    crops = views[0][None] if len(views) == 1 else np.stack(views)   # [crops, T, S, S, 3]; one crop: no copy
    return {
        **_text(video_id=vid, uri=uri), "clip_index": np.array([clip.index], np.int32),
        "last": np.array([last]), "start_s": np.array([clip.start_s]), "end_s": np.array([clip.end_s]),
        "valid_frames": np.array([clip.valid_frames], np.int32),
        "frame_indices": np.array([np.asarray(clip.frame_indices, np.int64)]),
        "frames": crops[None], **_text(error="", stage=""),
        "decode_s": np.array([seconds]),
    }


def failure_batch(vid: str, uri: str, stage: str, error: str, cfg: Config) -> dict[str, np.ndarray]:
    """A one-row batch saying that video `vid` failed at `stage` with `error` (no frames)."""
    t = cfg.sampling.num_frames
    return {
        **_text(video_id=vid, uri=uri), "clip_index": np.array([-1], np.int32),
        "last": np.array([True]), "start_s": np.array([0.0]), "end_s": np.array([0.0]),
        "valid_frames": np.array([0], np.int32), "frame_indices": np.zeros((1, t), np.int64),
        "frames": np.zeros((1, 0, t, 0, 0, 3), FRAME_DTYPES.get(cfg.preprocess.frame_dtype, np.uint8)),   # as clips
        **_text(error=error, stage=stage),
        "decode_s": np.array([0.0]),
    }


def _text(**columns: str) -> dict[str, np.ndarray]:
    """One-row text columns as object arrays: a fixed-width numpy string would drop trailing NULs."""
    return {name: np.array([value], dtype=object) for name, value in columns.items()}


def ray_node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:                                          # noqa: BLE001 - outside Ray
        return ""
