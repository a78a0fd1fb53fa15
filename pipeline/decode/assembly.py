"""Turning decoded frames into clips: each planned sample resolves to the nearest decoded frame within
the pass's snapping distance; frames are converted to RGB, turned upright and resized only when a sample
uses them."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from pipeline.clips import ClipSpec
from pipeline.config import Config
from pipeline.transforms import resize_short_side

log = logging.getLogger(__name__)

@dataclass
class Clip:
    """One decoded clip, ready for `pipeline.transforms.to_model_input`.

    frames:        uint8 [num_frames, H, W, 3] RGB, short side = preprocess.size, upright.
    frame_indices: source frame used for each sample (may differ from the plan by ≤ max_snap in fast
                   mode, or where a frame could not be decoded).
    sample_times, start_s, end_s, valid_frames: as in `pipeline.clips.ClipSpec` (seconds).
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
    Frames are converted to RGB, rotated and resized only when a sample uses them.
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
            self.converted = (j, self._convert(frame))
        rgb = self.converted[1]
        if self.buffer is None:
            self.shape = self.shape or rgb.shape
            self.buffer = np.empty((self.config.sampling.num_frames, *self.shape), dtype=np.uint8)
        self.buffer[k] = rgb
        self.used.append(j)

    def _convert(self, frame) -> np.ndarray:
        rgb = frame if isinstance(frame, np.ndarray) else frame.to_ndarray(format="rgb24")
        out = resize_short_side(upright(rgb[None], self.rotation), self.config.preprocess.size)[0]
        if self.shape is not None and out.shape != self.shape:
            log.warning("%s: frame size changes mid-stream; fitting %s to %s", self.video, out.shape, self.shape)
            out = _fit(out, self.shape)
        return out

    def _emit(self, index: int) -> Clip:
        spec = self.plan[index]
        clip = Clip(self.video, index, self.buffer, tuple(self.used), spec.sample_times, spec.start_s,
                    spec.end_s, spec.valid_frames)
        self.buffer, self.used = None, []
        return clip


def _fit(rgb: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One uint8 frame [H, W, 3] scaled to exactly `shape` (same bilinear as the resize)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=shape[:2], mode="bilinear", align_corners=False, antialias=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Frames [T, H, W, C] turned `rotation` degrees counter-clockwise (the display matrix), as players
    show them. Multiples of 90 only; other angles are left as they are."""
    if rotation % 90:
        log.warning("ignoring display rotation of %d degrees (not a multiple of 90)", rotation)
        return frames
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k, axes=(1, 2))) if k else frames
