"""Turning decoded frames into clips: each planned sample resolves to the nearest decoded frame within
the pass's snapping distance; frames are converted to RGB, turned upright and resized only when a sample
uses them."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from pipeline.decode import bilinear
from pipeline.decode.clips import ClipSpec
from pipeline.config import Config
from pipeline.decode.transforms import FRAME_DTYPES, crop_offsets, resized_shape

log = logging.getLogger(__name__)

@dataclass
class Clip:
    """One decoded clip, ready for `pipeline.decode.transforms.to_model_input`.

    frames:        [num_frames, H, W, 3] RGB, short side = preprocess.size, upright; uint8, or float32
                   (0…255, unrounded) when preprocess.frame_dtype is "float32".
    frame_indices: source frame used for each sample (may differ from the plan by ≤ max_snap in fast
                   mode, or where a frame could not be decoded).
    sample_times, start_s, end_s, valid_frames: as in `pipeline.decode.clips.ClipSpec` (seconds).
    """

    video: str
    index: int
    frames: np.ndarray
    frame_indices: tuple[int, ...]
    sample_times: tuple[float, ...]
    start_s: float
    end_s: float
    valid_frames: int


class Missing(Exception):
    """A pass could not deliver a sample of clip `clip` within its snapping distance."""

    def __init__(self, clip: int, frame: int):
        super().__init__(f"frame {frame} of clip {clip} was not decoded")
        self.clip, self.frame = clip, frame


class Assembler:
    """Fills clips from decoded frames arriving in presentation order.

    Each sample targets a source frame; `offer(j, frame)` resolves every pending target ≤ j to the nearer
    of the previous decoded frame and frame j, if within `max_snap` frames (else raises `Missing`).
    Frames are converted to RGB, rotated and resized only when a sample uses them, straight into the
    clip's buffer.
    """

    def __init__(self, plan: list[ClipSpec], start: int, config: Config, video: str, rotation: int,
                 max_snap: float):
        self.plan, self.config, self.video, self.rotation = plan, config, video, rotation
        self.max_snap = max_snap
        self.targets = [(c.index, k, i) for c in plan[start:] for k, i in enumerate(c.frame_indices)]
        self.pos = 0
        self.prev: tuple[int, object] | None = None
        self.converted: tuple[int, np.ndarray] | None = None
        self.buffer: np.ndarray | None = None
        self.used: list[int] = []
        self.shape: tuple[int, ...] | None = None      # frame shape of the whole video (the first one's)
        self.dtype = FRAME_DTYPES[config.preprocess.frame_dtype]
        self.reformatter = None                         # one swscale context for all frames (PyAV frames)

    def wanted(self) -> set[int]:
        """Source frames the plan asks for from here on."""
        return {i for _, _, i in self.targets[self.pos:]}

    def offer(self, j: int, frame) -> list[Clip]:
        done = []
        while self.pos < len(self.targets) and self.targets[self.pos][2] <= j:
            done += self._resolve(j, frame)
        self.prev = (j, frame)
        return done

    def finish(self) -> list[Clip]:
        """Resolve the samples past the last decoded frame (the end of the video)."""
        if self.prev is None and self.pos < len(self.targets):
            raise Missing(self.targets[self.pos][0], self.targets[self.pos][2])
        done = []
        while self.pos < len(self.targets):
            done += self._resolve(None, None)
        return done

    def _resolve(self, j: int | None, frame) -> list[Clip]:
        clip, k, target = self.targets[self.pos]
        d_prev = target - self.prev[0] if self.prev else math.inf
        d_cur = j - target if j is not None else math.inf
        if min(d_prev, d_cur) > self.max_snap:
            raise Missing(clip, target)
        use_j, use_frame = self.prev if d_prev <= d_cur else (j, frame)
        if use_j != target and self.max_snap == math.inf:
            log.warning("%s: frame %d could not be decoded; using frame %d", self.video, target, use_j)
        self._store(k, use_j, use_frame)
        self.pos += 1
        return [self._emit(clip)] if k == self.config.sampling.num_frames - 1 else []

    def _store(self, k: int, j: int, frame) -> None:
        if self.converted is None or self.converted[0] != j:
            rgb = upright(self._rgb(frame)[None], self.rotation)[0]
            self.shape = self.shape or self._frame_shape(rgb)
            self.converted = (j, self._resize(rgb, self._buffer()[k]))
        else:
            self._buffer()[k] = self.converted[1]
        self.used.append(j)

    def _buffer(self) -> np.ndarray:
        if self.buffer is None:
            self.buffer = np.empty((self.config.sampling.num_frames, *self.shape), self.dtype)
        return self.buffer

    def _rgb(self, frame) -> np.ndarray:
        """uint8 [H, W, 3] RGB (decord frames are RGB already). PyAV frames are converted to rgb24 as the
        official code does (not RGBA: swscale's RGBA path differs from its RGB one at the right edge of
        frames whose width is not a multiple of 16), through one swscale context kept for all frames."""
        if isinstance(frame, np.ndarray):
            return frame
        if self.reformatter is None:
            from av.video.reformatter import VideoReformatter

            self.reformatter = VideoReformatter()
        return self.reformatter.reformat(frame, format="rgb24").to_ndarray()

    def _frame_shape(self, rgb: np.ndarray) -> tuple[int, int, int]:
        """The clip's frame shape: the first frame resized, or the crop's with `decode.centre_crop`."""
        size = self.config.preprocess.size
        return (size, size, 3) if self.config.decode.centre_crop else (*resized_shape(*rgb.shape[:2], size), 3)

    def _resize(self, rgb: np.ndarray, out: np.ndarray) -> np.ndarray:
        """`rgb` resized (short side to preprocess.size) into `out`, a frame of the clip; returns `out`."""
        size = self.config.preprocess.size
        h, w = resized_shape(rgb.shape[0], rgb.shape[1], size)
        if self.config.decode.centre_crop:             # each frame cut by its own geometry: never refitted
            (y, x), = crop_offsets(h, w, size, 1)
            return _resize_window(rgb, h, w, (y, x, size, size), out)
        if (h, w) != out.shape[:2]:
            log.warning("%s: frame size changes mid-stream; fitting %s to %s", self.video, (h, w, 3), self.shape)
            rgb = bilinear.resize(rgb, h, w) if (h, w) != rgb.shape[:2] else np.ascontiguousarray(rgb[..., :3])
            h, w = out.shape[:2]
        return _resize_window(rgb, h, w, (0, 0, h, w), out)

    def _emit(self, index: int) -> Clip:
        spec = self.plan[index]
        clip = Clip(self.video, index, self.buffer, tuple(self.used), spec.sample_times, spec.start_s,
                    spec.end_s, spec.valid_frames)
        self.buffer, self.used = None, []
        return clip


def _resize_window(rgb: np.ndarray, h: int, w: int, window: tuple, out: np.ndarray) -> np.ndarray:
    """The `window` (y, x, height, width) of `rgb` resized to h × w, into `out`."""
    y, x, win_h, win_w = window
    if (h, w) == rgb.shape[:2]:
        out[...] = rgb[y:y + win_h, x:x + win_w, :3]
        return out
    return bilinear.resize(rgb, h, w, out=out, window=window)


def upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Frames [T, H, W, C] turned `rotation` degrees counter-clockwise (the display matrix), as players
    show them. Multiples of 90 only; other angles are left as they are."""
    if rotation % 90:
        log.warning("ignoring display rotation of %d degrees (not a multiple of 90)", rotation)
        return frames
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k, axes=(1, 2))) if k else frames
