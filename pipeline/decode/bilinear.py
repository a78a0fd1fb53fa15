"""Torch's bilinear resize, reproduced in numpy bit for bit, so that decoding needs no torch.

The reference is `F.interpolate(x.float(), mode="bilinear", align_corners=False, antialias=False)`
on CPU with one thread, rounded half to even: the official TimeSformer resize, which runs in DataLoader
workers (one torch thread each). For 3-channel images torch then runs its channels-last kernel (with
several threads it may take a generic one whose float results differ in the last bit, so ties round
differently). That kernel (float32, x86-64 AVX2/AVX512 builds, where GCC fuses multiply-adds) computes:
  source position  p = fma(scale, d + 0.5, -0.5) with scale = fl(in / out), clamped at 0,
                   i0 = floor(p), i1 = i0 + 1 (i0 at the last index), λ1 = p - i0, λ0 = 1 - λ1
  output value     s = fma(x11, w11, fma(x10, w10, fma(x00, w00, x01·w01))),  w_ab = λ_a(row)·λ_b(col)
every step rounded to float32. Numpy has no fused multiply-add, so `resize` computes the value
separably in float32 (at most 1.1e-4 from torch's: see `_MARGIN`), rounds it, and recomputes exactly
(extended precision, one float32 rounding per step, as an FMA does) only the values that lie within
`_MARGIN` of a rounding boundary: about 0.06% of them. The result equals torch's on every pixel
(tests/decode/test_transforms.py checks it against torch itself, over many sizes).

Frames are uint8 [H, W, C], RGB in the first three channels (C = 3, or 4 with the fourth ignored:
PyAV converts to RGBA as cheaply as to RGB, and 16-byte pixels gather fast). Plans (indices, weights,
work buffers) are cached per shape; the buffers make `resize` not thread-safe (decoding runs one frame
at a time per process).
"""
from __future__ import annotations

import functools
import sys

import numpy as np

F32 = np.float32
_MARGIN = 3e-4     # > 2.5× the bound on |float32 separable − torch|, 1.1e-4: 4 + 6 roundings of values
                   # < 256 (≤ 2^-17 each) plus the weights' products rounded to float32 (≤ 4·255·2^-25)


def axis_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, λ0, λ1) of each output index along one axis, exactly as torch computes them."""
    if n_in == n_out:
        same = np.arange(n_out)
        return same, same, np.ones(n_out, F32), np.zeros(n_out, F32)
    scale = np.float64(F32(n_in) / F32(n_out))
    pos = (scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5).astype(F32)   # one rounding: an FMA
    pos = np.maximum(pos, F32(0))
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
    lam1 = np.clip(pos - i0.astype(F32), F32(0), F32(1))
    return i0, i0 + (i0 < n_in - 1), (F32(1) - lam1).astype(F32), lam1.astype(F32)


class _Plan:
    """Indices, weights and work buffers for one (in shape, out shape, window of the output).

    The window (y, x, height, width) is the part of the output computed: the taps of the full output,
    sliced, and the vertical pass over only the input columns those output columns read — the same
    pixels as computing the whole output and cropping it, for less work."""

    def __init__(self, in_h: int, in_w: int, channels: int, out_h: int, out_w: int, window: tuple):
        y, x, win_h, win_w = window
        self.c, self.out_h, self.out_w = channels, win_h, win_w
        self.r0, self.r1, rl0, rl1 = (a[y:y + win_h] for a in axis_taps(in_h, out_h))
        c0, c1, cl0, cl1 = (a[x:x + win_w] for a in axis_taps(in_w, out_w))
        self.col0 = int(c0.min())                       # the input columns read: col0 … col0 + in_w - 1
        self.in_h, self.in_w, self.frame_w = in_h, int(c1.max()) + 1 - self.col0, in_w
        self.c0, self.c1 = c0 - self.col0, c1 - self.col0
        self.rows = (rl0, rl1)                          # per output row, λ0 and λ1 (float32)
        self.cols = (cl0, cl1)
        self.rw0, self.rw1 = rl0[:, None], rl1[:, None]
        self.cw0, self.cw1 = np.repeat(cl0, 4), np.repeat(cl1, 4)
        self._buffers()

    def _buffers(self) -> None:
        out_h, in_w, channels, out_w = self.out_h, self.in_w, self.c, self.out_w
        # rows after the vertical pass, one pixel = `channels` floats; +1 float so that the 16-byte
        # read of the last pixel of a 3-channel frame stays inside the buffer
        self.flat = np.zeros(out_h * in_w * channels + 1, F32)
        self.vert = self.flat[:-1].reshape(out_h, in_w * channels)
        self.tmp = np.empty_like(self.vert)
        self.pixels = np.ndarray((out_h, in_w), np.complex128, buffer=self.flat,   # 4 floats from each pixel
                                 strides=(in_w * channels * 4, channels * 4))
        # every other intermediate preallocated too: fresh arrays of this size cost page faults each time
        self.rows0 = np.empty((out_h, in_w * channels), np.uint8)
        self.rows1 = np.empty_like(self.rows0)
        self.left, self.right, self.rounded = (np.empty((out_h, out_w * 4), F32) for _ in range(3))
        self.bytes = np.empty((out_h, out_w * 4), np.uint8)
        self.near = np.empty((out_h, out_w * 4), bool)


@functools.lru_cache(maxsize=4)
def _plan(in_h: int, in_w: int, channels: int, out_h: int, out_w: int, window: tuple) -> _Plan:
    return _Plan(in_h, in_w, channels, out_h, out_w, window)


def resize(frame: np.ndarray, out_h: int, out_w: int, out: np.ndarray | None = None,
           window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """uint8 frame [H, W, C≥3] → [out_h, out_w, 3] as torch's bilinear gives it: uint8 rounded half to
    even (the default, or `out` uint8), or float32 unrounded when `out` is float32 (then within
    1.1e-4 of torch's float value). Writes into `out` when given and returns it. With `window`
    (y, x, height, width), only that part of the output: [height, width, 3], the same pixels as
    resizing the whole frame and cropping."""
    window = tuple(window) if window is not None else (0, 0, out_h, out_w)
    p = _plan(frame.shape[0], frame.shape[1], frame.shape[2], out_h, out_w, window)
    out = np.empty((p.out_h, p.out_w, 3), np.uint8) if out is None else out
    if out.shape != (p.out_h, p.out_w, 3) or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous [{p.out_h}, {p.out_w}, 3], got {out.shape}")
    value = _separable(frame, p)                     # float32 [out_h, out_w·4], channel 4 unused
    if out.dtype == F32:
        return _drop_fourth(value, out, p)
    rounded = np.rint(value, out=p.rounded)
    value -= rounded
    np.abs(value, out=value)
    near = np.flatnonzero(np.greater(value, F32(0.5 - _MARGIN), out=p.near))
    np.copyto(p.bytes, rounded, casting="unsafe")
    (_pack_fourth if sys.byteorder == "little" else _drop_fourth)(p.bytes, out, p)
    if near.size:
        _fix_near_ties(frame, near, out, p)
    return out


def _separable(frame: np.ndarray, p: _Plan) -> np.ndarray:
    """Vertical pass over the rows' needed columns, then the horizontal pass gathering 16-byte pixels."""
    rows = frame.reshape(p.in_h, p.frame_w * p.c)[:, p.col0 * p.c:(p.col0 + p.in_w) * p.c]
    np.multiply(np.take(rows, p.r0, axis=0, out=p.rows0, mode="clip"), p.rw0, out=p.vert)
    np.multiply(np.take(rows, p.r1, axis=0, out=p.rows1, mode="clip"), p.rw1, out=p.tmp)
    p.vert += p.tmp
    left = np.take(p.pixels, p.c0, axis=1, out=p.left.view(np.complex128), mode="clip").view(F32)
    right = np.take(p.pixels, p.c1, axis=1, out=p.right.view(np.complex128), mode="clip").view(F32)
    left *= p.cw0
    right *= p.cw1
    left += right
    return left


def _drop_fourth(value: np.ndarray, out: np.ndarray, p: _Plan) -> np.ndarray:
    """Copy channels 0–2 of each 4-channel pixel of `value` into `out` [out_h, out_w, 3] (same dtype)."""
    size = 3 * value.itemsize
    src = np.ndarray((p.out_h, p.out_w), f"V{size}", buffer=value, strides=(p.out_w * 4 * value.itemsize,
                                                                              4 * value.itemsize))
    np.copyto(out.view(f"V{size}").reshape(p.out_h, p.out_w), src)
    return out


def _pack_fourth(rgbx: np.ndarray, out: np.ndarray, p: _Plan) -> None:
    """uint8 4-channel pixels → `out` [..., 3], dropping channel 4: four pixels (four little-endian
    words, RGBX) become three words by shifts (twice as fast as numpy copying 3-byte items)."""
    n = out.size // 3
    words = rgbx.reshape(-1).view(np.uint32)[:n - n % 4].reshape(-1, 4) & 0xFFFFFF
    packed = out.reshape(-1)[:(n - n % 4) * 3].view(np.uint32).reshape(-1, 3)
    np.bitwise_or(words[:, 0], words[:, 1] << 24, out=packed[:, 0])
    np.bitwise_or(words[:, 1] >> 8, words[:, 2] << 16, out=packed[:, 1])
    np.bitwise_or(words[:, 2] >> 16, words[:, 3] << 8, out=packed[:, 2])
    tail = n % 4
    if tail:
        out.reshape(-1, 3)[n - tail:] = rgbx.reshape(-1, 4)[n - tail:, :3]


def _fix_near_ties(frame: np.ndarray, near: np.ndarray, out: np.ndarray, p: _Plan) -> None:
    """Recompute torch's exact float32 chain for the flat positions `near` of the 4-channel result."""
    y, rest = np.divmod(near, p.out_w * 4)
    x, ch = np.divmod(rest, 4)
    keep = ch < 3
    y, x, ch = y[keep], x[keep], ch[keep]
    h0, h1 = p.rows[0][y], p.rows[1][y]
    w0, w1 = p.cols[0][x], p.cols[1][x]
    r0, r1, c0, c1 = p.r0[y], p.r1[y], p.c0[x] + p.col0, p.c1[x] + p.col0
    s = (frame[r0, c1, ch].astype(F32) * (h0 * w1)).astype(F32)
    for r, c, w in ((r0, c0, h0 * w0), (r1, c0, h1 * w0), (r1, c1, h1 * w1)):
        s = _fma(frame[r, c, ch], w, s)
    out.reshape(-1)[(y * p.out_w + x) * 3 + ch] = np.rint(s)


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a·b + c rounded once: exact in extended precision (64-bit mantissa), then to float32."""
    wide = np.longdouble
    return (a.astype(wide) * b.astype(wide) + c.astype(wide)).astype(F32)
