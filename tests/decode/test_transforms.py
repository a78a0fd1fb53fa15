"""Resize / crop / normalise against explicit reference computations of the official semantics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.decode import bilinear
from pipeline.config import PreprocessConfig
from pipeline.decode.transforms import crop, crop_offsets, resize_short_side, resized_shape, to_model_input


def _reference_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear, align_corners=False, no antialias, written out by hand in float64: [H, W, C] → float."""
    in_h, in_w = img.shape[:2]

    def taps(n_in, n_out):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(int)
        i0 = np.minimum(i0, n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = taps(in_h, out_h)
    x0, x1, wx = taps(in_w, out_w)
    img = img.astype(np.float64)
    top = img[y0][:, x0] * (1 - wx)[None, :, None] + img[y0][:, x1] * wx[None, :, None]
    bottom = img[y1][:, x0] * (1 - wx)[None, :, None] + img[y1][:, x1] * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def _official_uniform_crop_offsets(height, width, size, spatial_idx):
    """The offsets of TimeSformer's `uniform_crop`, restated."""
    y = int(math.ceil((height - size) / 2))
    x = int(math.ceil((width - size) / 2))
    if height > width:
        y = {0: 0, 1: y, 2: height - size}[spatial_idx]
    else:
        x = {0: 0, 1: x, 2: width - size}[spatial_idx]
    return y, x


@pytest.mark.parametrize("hw,size,expected", [
    ((360, 640), 224, (224, 398)), ((640, 360), 224, (398, 224)), ((1080, 1920), 224, (224, 398)),
    ((224, 300), 224, (224, 300)), ((300, 224), 224, (300, 224)), ((100, 100), 224, (224, 224)),
    ((48, 64), 32, (32, 42)), ((47, 65), 32, (32, 44)), ((720, 1280), 448, (448, 796)),
])
def test_resized_shape_floors_the_long_side(hw, size, expected):
    assert resized_shape(*hw, size) == expected


@pytest.mark.parametrize("hw,size", [((48, 64), 32), ((47, 65), 32), ((64, 48), 32), ((30, 40), 224),
                                     ((36, 64), 24), ((90, 160), 56)])
def test_resize_matches_reference_bilinear(hw, size):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    out = resize_short_side(frames, size)
    out_h, out_w = resized_shape(*hw, size)
    assert out.dtype == np.uint8 and out.shape == (3, out_h, out_w, 3)
    for t in range(3):
        ref = _reference_bilinear(frames[t], out_h, out_w)
        diff = np.abs(out[t].astype(np.float64) - ref)
        assert diff.max() <= 0.5 + 1e-3          # rounding to nearest only


def _torch_nchw_reference(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The official call: F.interpolate on a contiguous NCHW float tensor, rounded back to uint8, with one
    torch thread, as in the official code's DataLoader workers (with several threads torch takes another
    kernel, whose float results differ in the last bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = frames.permute(0, 3, 1, 2).contiguous().float()
        y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    finally:
        torch.set_num_threads(threads)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


SIZES = [(360, 640), (480, 854), (1080, 1920), (640, 360), (223, 301), (100, 100), (36, 64), (47, 65),
         (64, 128), (225, 400), (224, 300), (30, 40), (721, 1281)]


@pytest.mark.parametrize("hw", SIZES)
def test_resize_is_bit_identical_to_torch_interpolate(hw):
    """The numpy resize (no torch in decode workers) equals the official call, F.interpolate on NCHW
    float32 rounded to uint8, on every pixel: downscaling, upscaling, exact halves (64×128: every value
    a tie, .5, rounded to even) and frames where one side keeps its size."""
    frames = np.random.default_rng(hw[0] * 7 + hw[1]).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    out = resize_short_side(frames, 224)
    ref = _torch_nchw_reference(torch.from_numpy(frames), resized_shape(*hw, 224)).numpy()
    assert out.dtype == np.uint8 and out.flags.c_contiguous and np.array_equal(out, ref)


@pytest.mark.parametrize("hw", SIZES)
def test_a_window_of_the_resize_equals_the_crop_of_the_whole_resize(hw):
    """`bilinear.resize(..., window=)` computes only a crop of the output (the decoder's centre crop):
    bit for bit the crop of the whole resize — uint8 and float32, centre and corner windows."""
    from pipeline.decode import bilinear

    frame = np.random.default_rng(hw[0] + 3 * hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    out_h, out_w = resized_shape(*hw, 224)
    size = min(out_h, out_w)
    for dtype in (np.uint8, np.float32):
        whole = bilinear.resize(frame, out_h, out_w, out=np.empty((out_h, out_w, 3), dtype))
        for y, x in [*crop_offsets(out_h, out_w, size, 3), (0, 0)]:
            part = bilinear.resize(frame, out_h, out_w, out=np.empty((size, size, 3), dtype), window=(y, x, size, size))
            assert np.array_equal(part, whole[y:y + size, x:x + size]), (dtype, y, x)


@pytest.mark.parametrize("hw", [(360, 640), (64, 128), (223, 301)])
def test_resize_ignores_a_fourth_channel_and_gives_float_unrounded(hw):
    """RGBA input (what the decoder converts to) resizes like its RGB; float32 output is torch's float
    value, unrounded (the exact-preprocessing setting), within 2e-4 of a level."""
    rgb = np.random.default_rng(hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((*hw, 1), 7, np.uint8)], axis=2)
    size = resized_shape(*hw, 224)
    assert np.array_equal(bilinear.resize(rgba, *size), resize_short_side(rgb[None], 224)[0])
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    ref = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)   # any kernel
    out = resize_short_side(rgb[None], 224, dtype="float32")[0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref[0].permute(1, 2, 0).numpy(), rtol=0, atol=2e-4)


def test_resize_is_identity_when_short_side_already_fits():
    frames = np.random.default_rng(1).integers(0, 256, (2, 32, 50, 3), dtype=np.uint8)
    assert np.array_equal(resize_short_side(frames, 32), frames)


def test_resize_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        resize_short_side(np.zeros((2, 8, 8, 3), np.float32), 4)
    with pytest.raises(ValueError, match="uint8"):
        resize_short_side(np.zeros((8, 8, 3), np.uint8), 4)


@pytest.mark.parametrize("hw", [(224, 398), (398, 224), (224, 224), (225, 300), (300, 227), (33, 32)])
def test_crop_offsets_follow_official_uniform_crop(hw):
    size = min(hw)
    size = 224 if size >= 224 else 32
    assert crop_offsets(*hw, size, 1) == [_official_uniform_crop_offsets(*hw, size, 1)]
    assert crop_offsets(*hw, size, 3) == [_official_uniform_crop_offsets(*hw, size, i) for i in range(3)]


def test_crop_returns_views_of_the_right_pixels():
    frames = np.arange(2 * 6 * 10 * 3, dtype=np.int64).reshape(2, 6, 10, 3)
    left, centre, right = crop(frames, 6, 3)
    assert np.array_equal(left, frames[:, :, 0:6])
    assert np.array_equal(centre, frames[:, :, 2:8])
    assert np.array_equal(right, frames[:, :, 4:10])
    with pytest.raises(ValueError):
        crop(frames, 7)
    with pytest.raises(ValueError):
        crop(frames, 4, crops=2)


@pytest.mark.parametrize("crops", [1, 3])
def test_to_model_input_matches_reference(crops):
    p = PreprocessConfig(size=32, crops=crops, mean=(0.45, 0.4, 0.5), std=(0.225, 0.2, 0.25))
    frames = torch.randint(0, 256, (2, 4, 32, 42, 3), dtype=torch.uint8)
    out = to_model_input(frames, p)
    assert out.dtype == torch.float32 and out.shape == (2 * crops, 3, 4, 32, 32)
    mean = np.array(p.mean).reshape(3, 1, 1, 1)
    std = np.array(p.std).reshape(3, 1, 1, 1)
    for b in range(2):
        for c, (y, x) in enumerate(crop_offsets(32, 42, 32, crops)):
            clip = frames[b, :, y:y + 32, x:x + 32].numpy().transpose(3, 0, 1, 2) / 255.0
            ref = (clip - mean) / std
            np.testing.assert_allclose(out[b * crops + c].numpy(), ref, rtol=0, atol=1e-5)


def test_to_model_input_default_config_and_validation():
    frames = torch.full((1, 2, 224, 300, 3), 255, dtype=torch.uint8)
    out = to_model_input(frames)
    assert out.shape == (1, 3, 2, 224, 224)
    assert torch.allclose(out, torch.full_like(out, (1 - 0.45) / 0.225))
    with pytest.raises(ValueError):
        to_model_input(frames[0])
