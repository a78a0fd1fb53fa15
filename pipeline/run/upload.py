"""Clip batches from host memory to the model's device: in one copy, or in chunks through pinned buffers.

`ChunkUploader(device, chunk).chunks(frames)` yields a batch of uint8 frames (numpy [B, ...]) on `device`
as consecutive chunks of at most `chunk` clips; `chunk=0` yields the whole batch in one copy from
pageable memory (the plain path). On CUDA with `chunk > 0` the copies are double-buffered: each chunk is
copied into one of two pinned host buffers and sent by an asynchronous copy on a side stream, and only
the consumer's stream waits for it. The generator fills the next chunk's buffer when the consumer asks
for it, that is after it has queued the model on the current chunk, so the host copy and the transfer
of chunk k+1 overlap the GPU's work on chunk k and only the first chunk's transfer is exposed. A buffer
is refilled only once its previous transfer has finished. On the CPU the chunks are views, not copies.
"""
from __future__ import annotations

from typing import Iterator

import warnings

import numpy as np
import torch


def as_tensor(frames: np.ndarray) -> torch.Tensor:
    """A tensor over `frames`' memory, no copy, also when the array is read-only (as Ray hands a batch:
    a view of its object-store buffer). Nothing here writes to it; torch's warning about such arrays is
    silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(frames)


class ChunkUploader:
    """Moves uint8 clip batches to `device`, `chunk` clips at a time (0: the whole batch at once)."""

    def __init__(self, device: torch.device | str, chunk: int = 0):
        if chunk < 0:
            raise ValueError(f"upload chunk must be >= 0 clips (0 = whole batch), got {chunk}")
        self.device, self.chunk = torch.device(device), chunk
        self.pinned = self.device.type == "cuda" and chunk > 0
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._sent: list[torch.cuda.Event | None] = [None, None]
        self._stream: torch.cuda.Stream | None = None

    def chunks(self, frames: np.ndarray) -> Iterator[torch.Tensor]:
        """frames uint8 [B, ...] → its chunks [≤chunk, ...] on the device, in order."""
        size = self.chunk or len(frames)
        for k, start in enumerate(range(0, len(frames), size)):
            part = frames[start:start + size]
            if self.pinned:
                yield self._send_pinned(part, k % 2)
            else:
                yield as_tensor(part).to(self.device, non_blocking=True)

    def _send_pinned(self, part: np.ndarray, slot: int) -> torch.Tensor:
        source = as_tensor(part)
        staging = self._staging(slot, source)
        if self._sent[slot] is not None:
            self._sent[slot].synchronize()              # the buffer's previous transfer has left
        staging.copy_(source)
        consumer = torch.cuda.current_stream(self.device)
        stream = self._copy_stream()
        with torch.cuda.stream(stream):
            on_device = staging.to(self.device, non_blocking=True)
            self._sent[slot] = torch.cuda.Event()
            self._sent[slot].record(stream)
        consumer.wait_event(self._sent[slot])
        on_device.record_stream(consumer)               # allocated on the side stream, used on the consumer's
        return on_device

    def _staging(self, slot: int, like: torch.Tensor) -> torch.Tensor:
        """A pinned view in buffer `slot` with the shape and dtype of `like`; buffers are reused while
        chunks fit them."""
        buffer, shape = self._buffers[slot], like.shape
        if buffer is None or buffer.dtype != like.dtype or buffer.shape[1:] != shape[1:] or len(buffer) < len(like):
            if self._sent[slot] is not None:
                self._sent[slot].synchronize()
            buffer = torch.empty((max(len(like), self.chunk), *shape[1:]), dtype=like.dtype, pin_memory=True)
            self._buffers[slot], self._sent[slot] = buffer, None
        return buffer[:len(like)]

    def _copy_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream
