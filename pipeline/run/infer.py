"""The inference stage: a Ray Data callable class that owns one model on one GPU (or the CPU).

Batches arrive as columns of clip rows from the decode stage, frames uint8 [crops, T, S, S, 3]; rows
with a non-empty `error` are failures travelling through and are passed on untouched. Frames are
normalised where the model lives (on the GPU when there is one), run under bf16 autocast on CUDA and
fp32 on the CPU, and the crops of a clip are averaged. An exception in a batch fails the rows of that
batch (stage "infer") and the actor goes on; a crashed actor is restarted by Ray and its batches retried.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from pipeline.config import Config, ModelConfig
from pipeline.run.decode_stage import ray_node_id
from pipeline.faults import failpoint
from pipeline.run.results import to_table
from pipeline.model import TimeSformer, load_timesformer
from pipeline.model.accel import cast_matmul_weights_, compiled_forward
from pipeline.model.limits import forward_clips
from pipeline.decode.transforms import to_model_input
from pipeline.run.upload import ChunkUploader

log = logging.getLogger(__name__)

RESULT_DROP = ("frames",)


def pick_device() -> torch.device:
    """CUDA when this process can see a device; else the CPU (also when Ray gave a GPU id but no device)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """"cuda:0 (NVIDIA H100 …)", "cpu", or "cpu (fallback: Ray GPU ids [0], no CUDA device)"."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    try:
        import ray

        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:                                             # noqa: BLE001 - outside Ray
        gpu_ids = []
    return f"cpu (fallback: Ray GPU ids {list(gpu_ids)}, no CUDA device)" if gpu_ids else "cpu"


class ClipEmbedder:
    """Callable class for `Dataset.map_batches`: clip batches → embedding and logits columns."""

    def __init__(self, config: dict):
        self.config = Config.from_dict(config)
        m = self.config.model
        self.device = pick_device()
        self.dtype = _dtype(m.precision, self.device)
        model = load_timesformer(m.checkpoint, preset=m.preset, seed=m.seed, fused_attn=m.fused_attn,
                                 num_frames=self.config.sampling.num_frames, img_size=self.config.preprocess.size)
        self.model, self.forward = prepare_model(model, m, self.device, self.dtype)
        self.preprocess = dataclasses.replace(self.config.preprocess, crops=1)   # crops already cut
        self.device_label = describe_device(self.device)
        self.node_id = ray_node_id()
        log.info("inference actor ready on %s (%s)", self.device_label, self.dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """A batch of decoded clips (and failure rows) → result rows (see pipeline/run/results.py)."""
        return to_table(self.results(batch))

    def results(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The result columns of a batch, as numpy arrays: its metadata, embedding, logits, error, stage,
        timing and where it ran; a batch that fails inference turns into failure rows."""
        failpoint("actor.batch")
        start = time.perf_counter()
        n = len(batch["video_id"])
        ok = [i for i in range(n) if not batch["error"][i]]
        dim, classes = self.model.embed_dim, self.model.num_classes
        emb = np.zeros((n, dim), np.float32)
        logits = np.zeros((n, classes), np.float32)
        errors = np.array([str(e) for e in batch["error"]], dtype=object)
        stages = np.array([str(s) for s in batch["stage"]], dtype=object)
        if ok:
            try:
                emb[ok], logits[ok] = self.embed(ok_frames(batch["frames"], ok))
            except Exception as exc:                              # noqa: BLE001 - becomes failure rows
                log.exception("inference failed on a batch of %d clips", len(ok))
                for i in ok:
                    errors[i] = f"inference: {type(exc).__name__}: {exc}"
                    stages[i] = "infer"
        out = {k: v for k, v in batch.items() if k not in RESULT_DROP}
        out.update(embedding=emb, logits=logits, error=errors, stage=stages,
                   infer_s=np.full(n, (time.perf_counter() - start) / max(n, 1)),
                   device=np.full(n, self.device_label, dtype=object),
                   infer_node=np.full(n, self.node_id, dtype=object))
        return out

    @functools.cached_property
    def uploader(self) -> ChunkUploader:
        """Host-to-device copies of clip batches (`model.upload_chunk` clips at a time)."""
        return ChunkUploader(self.device, self.config.model.upload_chunk)

    @torch.no_grad()          # not inference_mode: under it autocast re-casts the fp32 weights every call
    def embed(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames [B, crops, T, S, S, 3] (uint8, or float32 0…255 with `preprocess.frame_dtype` "float32")
        → (embedding [B, D], logits [B, C]) averaged over crops, float32. The model runs on one upload
        chunk at a time (the whole batch unless `model.upload_chunk` is set)."""
        b, crops = frames.shape[:2]
        embs, logits = [], []
        for part in self.uploader.chunks(frames):
            emb, logit = self.forward_rows(to_model_input(part.flatten(0, 1), self.preprocess))
            embs.append(emb)
            logits.append(logit)
        emb = torch.cat(embs).view(b, crops, -1).mean(dim=1)
        logit = torch.cat(logits).view(b, crops, -1).mean(dim=1)
        return emb.cpu().numpy(), logit.cpu().numpy()

    @functools.cached_property
    def fixed_rows(self) -> int:
        """Rows every forward of a compiled model gets (0: as they come): one batch or upload chunk of
        clips times their crops, so that the last, short batch of a run does not recompile the graph."""
        m, on_gpu = self.config.model, self.device.type == "cuda"
        if not (m.compile and on_gpu):
            return 0
        return forward_clips(self.config.run.batch_size, m.upload_chunk, on_gpu) * self.config.preprocess.crops

    def forward_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input rows → (CLS, logits) float32, one row each; padded to `fixed_rows` for the model."""
        n = len(x)
        x = pad_rows(x, self.fixed_rows)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            emb = self.forward(x)
            logit = self.model.forward_head(emb)
        # copies: compiled graphs may reuse their outputs
        return emb[:n].to(torch.float32, copy=True), logit[:n].to(torch.float32, copy=True)


def ok_frames(frames: np.ndarray, ok: list[int]) -> np.ndarray:
    """The frames of the rows in `ok`, as one array. Ray hands a batch's frames as one read-only array
    over its buffer: that array itself when every row is a clip (no host copy before the upload), else
    the clips' rows; rows that are separate arrays are stacked."""
    if isinstance(frames, np.ndarray) and frames.dtype != object:
        return frames if len(ok) == len(frames) else frames[ok]
    return np.stack([frames[i] for i in ok])


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """`x` with its last row repeated up to `rows` rows (`x` itself when it has as many or more)."""
    if len(x) >= rows:
        return x
    return torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])])


def prepare_model(model: TimeSformer, m: ModelConfig, device: torch.device,
                  dtype: torch.dtype) -> tuple[TimeSformer, Callable[[torch.Tensor], torch.Tensor]]:
    """The model on `device` in eval mode with `m`'s speed-ups, and the feature forward to call.

    `bf16_weights` casts the matmul weights once when the model runs under bf16 autocast (same numbers);
    `compile` (CUDA only) compiles over `compile_scope` with `compile_mode`."""
    model = model.to(device).eval()
    if m.bf16_weights and dtype == torch.bfloat16:
        cast_matmul_weights_(model, torch.bfloat16)
    if m.compile and device.type == "cuda":
        return model, compiled_forward(model, m.compile_scope, m.compile_mode)
    return model, model.forward_features


def _dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
