"""How many clips one forward may hold: the fused attention kernels' limit on sequences per call.

Divided space-time attention runs its temporal attention over one sequence per patch and crop of every
clip: `clips · crops · (size / patch)²` sequences of `num_frames` tokens (196 a crop at 224 px / 16).
PyTorch's fused SDPA kernels (flash, memory-efficient) put the batch of sequences on a CUDA grid
dimension that holds at most 65,535 blocks, so a larger call fails on the GPU ("invalid configuration
argument") although it would fit in memory: at 224 px that is 335 clips of one crop. The run refuses
such a batch before it starts, and the GPU check's largest-batch probe stops below it.
"""
from __future__ import annotations

MAX_SEQUENCES = 65_535                  # blocks on the CUDA grid dimension the fused kernels use


def sequences_per_clip(img_size: int, patch_size: int, crops: int = 1) -> int:
    """Temporal-attention sequences one clip adds to a forward: one per patch of every crop."""
    return crops * (img_size // patch_size) ** 2


def max_clips_per_forward(img_size: int, patch_size: int, crops: int = 1) -> int:
    """The most clips a forward can hold before the fused kernels refuse it (334 at 224 px, 1 crop)."""
    return MAX_SEQUENCES // sequences_per_clip(img_size, patch_size, crops)


def forward_clips(batch_size: int, upload_chunk: int, on_gpu: bool = True) -> int:
    """Clips in one forward of the inference actor: the upload chunk when set, else the whole batch
    (`run.batch_size`, whose 0 means 4 on a GPU)."""
    return upload_chunk or batch_size or (4 if on_gpu else 1)


def batch_problem(batch_size: int, upload_chunk: int, img_size: int, patch_size: int, crops: int) -> str | None:
    """Why this batch cannot run through the fused kernels, or None."""
    clips = forward_clips(batch_size, upload_chunk)
    limit = max_clips_per_forward(img_size, patch_size, crops)
    if clips <= limit:
        return None
    seqs = clips * sequences_per_clip(img_size, patch_size, crops)
    return (f"{clips} clips per forward ({'model.upload_chunk' if upload_chunk else 'run.batch_size'}) make "
            f"{seqs:,} temporal-attention sequences, over the {MAX_SEQUENCES:,} a fused attention kernel "
            f"takes in one call; use at most {limit} clips per forward (or set model.upload_chunk)")
