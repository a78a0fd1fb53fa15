"""Resize, crop and normalise video frames, as the official TimeSformer test-time preprocessing does.

The short side is scaled to `size` with torch's `F.interpolate(mode="bilinear", align_corners=False)`
without antialiasing (the long side becomes floor(long · size / short)), then `size`×`size` crops are
taken with `uniform_crop` offsets, and values are divided by 255 and normalised with (x - mean) / std.
The decoder resizes on the CPU, without torch (`pipeline.decode.bilinear` reproduces torch's result bit for
bit), and rounds back to uint8 so that clips travel small, or keeps float32 when
`preprocess.frame_dtype` asks for the official order's exact result; `to_model_input` does the rest with
torch on whatever device the model lives on. Importing this module does not import torch (decode
workers stay light); only `to_model_input` needs it.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from pipeline.decode import bilinear
from pipeline.config import PreprocessConfig

if TYPE_CHECKING:
    import torch

FRAME_DTYPES = {"uint8": np.uint8, "float32": np.float32}


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the short side to `size`; the long side is floored, as officially.

    Frames whose short side already equals `size` keep their shape.
    """
    if min(height, width) == size:
        return height, width
    if width < height:
        return int(math.floor(height / width * size)), size
    return size, int(math.floor(width / height * size))


def resize_short_side(frames: np.ndarray, size: int, dtype: str = "uint8") -> np.ndarray:
    """Scale uint8 frames [T, H, W, 3] so the short side is `size`: [T, H', W', 3] of `dtype`, "uint8"
    (torch's float result rounded half to even, as the official code's uint8 frames would be) or
    "float32" (torch's float result, unrounded). Frames whose short side already equals `size` keep
    their values (converted to `dtype`)."""
    _check_frames(frames, 4)
    out_h, out_w = resized_shape(frames.shape[1], frames.shape[2], size)
    if (out_h, out_w) == frames.shape[1:3]:
        return frames if dtype == "uint8" else frames.astype(FRAME_DTYPES[dtype])
    out = np.empty((len(frames), out_h, out_w, 3), FRAME_DTYPES[dtype])
    for frame, target in zip(frames, out):
        bilinear.resize(frame, out_h, out_w, out=target)
    return out


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
    """Resized clips [B, T, H, W, 3] (any device; uint8, or float32 in 0…255 unrounded) → normalised
    float32 [B·crops, 3, T, size, size].

    The crops of clip b are rows b·crops … b·crops + crops - 1 (crop-major within a clip), so
    `out.view(B, crops, ...)` groups them back. Runs on the device of `frames`; never changes `frames`.
    """
    import torch

    p = preprocess or PreprocessConfig()
    _check_frames(frames, 5, allow_float=True)
    views = torch.stack(crop(frames, p.size, p.crops), dim=1)          # B, crops, T, s, s, 3 (a copy)
    x = views.flatten(0, 1).permute(0, 4, 1, 2, 3).to(torch.float32).div_(255.0)  # B·crops, 3, T, s, s
    mean = channel_vector(tuple(p.mean), x.dtype, x.device)
    std = channel_vector(tuple(p.std), x.dtype, x.device)
    return x.sub_(mean).div_(std)


@functools.lru_cache(maxsize=32)
def channel_vector(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a [1, 3, 1, 1, 1] tensor on `device`, made once per (values, dtype, device): making it
    from a list on a GPU is a blocking host-to-device copy, a stream synchronisation every call."""
    import torch

    return torch.tensor(values, dtype=dtype, device=device).view(1, 3, 1, 1, 1)


def _check_frames(x, ndim: int, allow_float: bool = False) -> None:
    """uint8 (or, with `allow_float`, float32) frames of `ndim` dimensions, RGB last; numpy or torch."""
    kinds = ("uint8", "float32") if allow_float else ("uint8",)
    if str(x.dtype).removeprefix("torch.") not in kinds or x.ndim != ndim or x.shape[-1] != 3:
        layout = "[T, H, W, 3]" if ndim == 4 else "[B, T, H, W, 3]"
        raise ValueError(f"expected {' or '.join(kinds)} frames {layout}, got {x.dtype} with shape {tuple(x.shape)}")
