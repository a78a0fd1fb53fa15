"""`preprocess.frame_dtype = "float32"`: features equal the official preprocessing order end to end.

The official code converts every decoded frame to RGB, normalises in float, resizes in float and never
rounds; the default rounds resized frames to uint8 before normalising. Both are computed here on one
generated video with the tiny model: decode → crop → `ClipEmbedder.embed` against the official order
written out with torch.
"""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featurekit import write_video
from pipeline.config import Config
from pipeline.decode import decode_clips
from pipeline.run.infer import ClipEmbedder
from pipeline.decode.transforms import crop, crop_offsets, resized_shape

CONFIG = Config.from_preset("tiny", checkpoint="random").replace(decode={"timeout_s": 0})
EXACT = CONFIG.replace(preprocess={"frame_dtype": "float32"})


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """90×160 (resized to 32×56): smooth gradients, moving stripes and noise, so that resized values fall
    between whole levels everywhere."""
    rng = np.random.default_rng(3)
    t, y, x = np.meshgrid(np.arange(40), np.arange(90), np.arange(160), indexing="ij")
    base = 90 + 60 * np.sin(x / 7.0 + t / 5.0) + 40 * np.cos(y / 5.0) + rng.normal(0, 12, t.shape)
    frames = np.stack([base, base[:, ::-1, :] * 0.8, 255 - base], axis=-1)
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    return write_video(str(tmp_path_factory.mktemp("exact") / "v.mp4"), frames)


@pytest.fixture(scope="module")
def embedder():
    return ClipEmbedder(CONFIG.to_dict())


def official_features(path: str, frame_indices: list[tuple[int, ...]], embedder: ClipEmbedder) -> np.ndarray:
    """The official order: every frame to RGB, /255, normalise, resize in float, centre crop, model."""
    p = CONFIG.preprocess
    with av.open(path) as container:
        rgb = [frame.to_rgb().to_ndarray() for frame in container.decode(video=0)]
    clips = []
    for indices in frame_indices:
        x = torch.from_numpy(np.stack([rgb[i] for i in indices])).float() / 255.0      # T, H, W, 3
        x = (x - torch.tensor(p.mean)) / torch.tensor(p.std)
        x = x.permute(0, 3, 1, 2)                                                      # T, 3, H, W
        x = F.interpolate(x, size=resized_shape(x.shape[2], x.shape[3], p.size), mode="bilinear",
                          align_corners=False)
        (top, left), = crop_offsets(x.shape[2], x.shape[3], p.size, 1)
        clips.append(x[:, :, top:top + p.size, left:left + p.size].permute(1, 0, 2, 3))  # 3, T, S, S
    with torch.inference_mode():
        return embedder.model.forward_features(torch.stack(clips)).numpy()


def our_features(path: str, config: Config, embedder: ClipEmbedder) -> tuple[np.ndarray, list]:
    clips = list(decode_clips(path, config))
    frames = np.stack([np.stack(crop(c.frames, config.preprocess.size, 1)) for c in clips])
    return embedder.embed(frames)[0], clips


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_float32_frames_give_the_official_orders_features(video, embedder):
    exact, clips = our_features(video, EXACT, embedder)
    assert all(c.frames.dtype == np.float32 for c in clips) and len(clips) >= 2
    reference = official_features(video, [c.frame_indices for c in clips], embedder)
    default, _ = our_features(video, CONFIG, embedder)
    assert relative(exact, reference) <= 1e-5
    assert relative(default, reference) > 1e-4          # the uint8 rounding the setting removes


def test_float32_frames_are_the_unrounded_uint8_ones(video):
    exact = list(decode_clips(video, EXACT))
    rounded = list(decode_clips(video, CONFIG))
    for a, b in zip(exact, rounded):
        assert a.frames.shape == b.frames.shape and a.frame_indices == b.frame_indices
        assert np.abs(a.frames - b.frames).max() <= 0.5 + 2e-4
        assert not np.array_equal(a.frames, b.frames.astype(np.float32))


def test_frame_dtype_is_part_of_the_fingerprint_only_when_set():
    assert "frame_dtype" not in Config().feature_fields()["preprocess"]   # earlier outputs keep theirs
    exact = Config().replace(preprocess={"frame_dtype": "float32"})
    assert exact.feature_fields()["preprocess"]["frame_dtype"] == "float32"
    assert exact.fingerprint() != Config().fingerprint()
    assert Config.from_dict(exact.to_dict()) == exact


def test_an_unknown_frame_dtype_is_refused(video):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="frame_dtype"):
        next(decode_clips(video, CONFIG.replace(preprocess={"frame_dtype": "float16"})))
