"""Resize, crop and normalise video frames: one torch implementation for CPU and GPU.

Follows the official TimeSformer test-time preprocessing: the short side is scaled to `size` with
`F.interpolate(mode="bilinear", align_corners=False)` without antialiasing (the long side becomes
floor(long · size / short)), then `size`×`size` crops are taken with `uniform_crop` offsets, and values are
divided by 255 and normalised with (x - mean) / std. The decoder resizes (and rounds back to uint8) so
that clips travel small; `to_model_input` does the rest on whatever device the model lives on.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import PreprocessConfig


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the short side to `size`; the long side is floored, as officially.

    Frames whose short side already equals `size` keep their shape.
    """
    if min(height, width) == size:
        return height, width
    if width < height:
        return int(math.floor(height / width * size)), size
    return size, int(math.floor(width / height * size))


def resize_short_side(frames: torch.Tensor | np.ndarray, size: int) -> torch.Tensor | np.ndarray:
    """Scale uint8 frames [T, H, W, 3] so the short side is `size`; uint8 [T, H', W', 3], same type back.

    Bilinear, align_corners=False, no antialias, computed in float32 and rounded to the nearest integer.
    Frames whose short side already equals `size` are returned unchanged.
    """
    as_numpy = isinstance(frames, np.ndarray)
    x = torch.from_numpy(frames) if as_numpy else frames
    _check_frames(x, 4)
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = resized_shape(height, width, size)
    if (out_h, out_w) != (height, width):
        # channels_last all the way: torch's channels-last bilinear kernel is ~2× its NCHW one for 3
        # channels, gives bit-identical results, and its output permutes back to [T, H, W, 3] without a
        # copy. The float copy is made channels_last explicitly: a size-1 batch such as numpy's `a[None]`
        # has batch stride 0, which `interpolate` would not run channels-last.
        src = x.permute(0, 3, 1, 2)
        y = torch.empty(src.shape, dtype=torch.float32, device=src.device, memory_format=torch.channels_last)
        y.copy_(src)
        y = F.interpolate(y, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=False)
        x = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return x.numpy() if as_numpy else x


def crop_offsets(height: int, width: int, size: int, crops: int = 1) -> list[tuple[int, int]]:
    """(y, x) top-left corners of the crops, official `uniform_crop` semantics.

    crops=1: the centre, at (ceil((H - size) / 2), ceil((W - size) / 2)).
    crops=3: first/centre/last along the long side (left/centre/right when W ≥ H, top/centre/bottom
    otherwise), centred along the short side.
    """
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}×{size} from frames of {height}×{width} (H×W); resize first")
    centre = (int(math.ceil((height - size) / 2)), int(math.ceil((width - size) / 2)))
    if crops == 1:
        return [centre]
    if crops != 3:
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    if height > width:
        return [(0, centre[1]), centre, (height - size, centre[1])]
    return [(centre[0], 0), centre, (centre[0], width - size)]


def crop(frames: torch.Tensor | np.ndarray, size: int, crops: int = 1) -> list:
    """The `crops` size×size crops of frames [..., H, W, C] (channels last), each [..., size, size, C],
    as views of the input (same type)."""
    height, width = frames.shape[-3], frames.shape[-2]
    return [frames[..., y:y + size, x:x + size, :] for y, x in crop_offsets(height, width, size, crops)]


def to_model_input(frames: torch.Tensor, preprocess: PreprocessConfig | None = None) -> torch.Tensor:
    """Resized uint8 clips [B, T, H, W, 3] (any device) → normalised float32 [B·crops, 3, T, size, size].

    The crops of clip b are rows b·crops … b·crops + crops - 1 (crop-major within a clip), so
    `out.view(B, crops, ...)` groups them back. Runs on the device of `frames`.
    """
    p = preprocess or PreprocessConfig()
    _check_frames(frames, 5)
    views = torch.stack(crop(frames, p.size, p.crops), dim=1)          # B, crops, T, s, s, 3
    x = views.flatten(0, 1).permute(0, 4, 1, 2, 3).float().div_(255.0)  # B·crops, 3, T, s, s
    mean = _channel_vector(p.mean, x)
    std = _channel_vector(p.std, x)
    return x.sub_(mean).div_(std)


def _channel_vector(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1, 1)


def _check_frames(x: torch.Tensor, ndim: int) -> None:
    if x.dtype != torch.uint8 or x.ndim != ndim or x.shape[-1] != 3:
        layout = "[T, H, W, 3]" if ndim == 4 else "[B, T, H, W, 3]"
        raise ValueError(f"expected uint8 frames {layout}, got {x.dtype} with shape {tuple(x.shape)}")
