"""Every knob of a run as frozen dataclasses, with YAML in/out and a fingerprint of what changes features.

Defaults equal the paper's protocol for the default preset (TimeSformer-L HowTo100M). A config is built
from a preset (`Config.from_preset`) and then overridden field by field (`Config.replace`, YAML).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from pipeline.presets import DEFAULT_PRESET, get_preset


@dataclass(frozen=True)
class ModelConfig:
    preset: str = DEFAULT_PRESET
    checkpoint: str | None = None      # path / fsspec URL / "random"; None means "not given" (an error to run)
    seed: int = 0                      # seed of "random" weights
    precision: str = "auto"            # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    fused_attn: bool = True            # F.scaled_dot_product_attention, else the manual reference path
    compile: bool = False              # torch.compile the model (CUDA only)
    compile_scope: str = "model"       # model (the whole forward) | blocks (each block; one graph, faster to compile)
    compile_mode: str = "default"      # torch.compile mode; "reduce-overhead" also captures CUDA graphs
    bf16_weights: bool = True          # keep Linear/conv weights in bf16 under bf16 autocast (same numbers,
                                       # no re-cast on every call; fp32 runs keep fp32 weights)
    upload_chunk: int = 0              # clips per forward, sent through pinned double buffers that overlap
                                       # the transfer with compute (CUDA); 0 = the whole batch in one copy


@dataclass(frozen=True)
class SamplingConfig:
    num_frames: int = 96               # samples per clip
    stride: int = 32                   # one sample every `stride` frames of target_fps time
    target_fps: float = 30.0

    @property
    def interval_s(self) -> float:
        """Seconds between two samples (1.0667 s for stride 32 at 30 fps)."""
        return self.stride / self.target_fps

    @property
    def clip_s(self) -> float:
        """Seconds one clip covers (102.4 s for 96 × 32 at 30 fps)."""
        return self.num_frames * self.interval_s


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 224                    # short side after resize, and crop size
    crops: int = 1                     # 1 (centre) or 3 (top-left/centre/bottom-right along the long side)
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    frame_dtype: str = "uint8"         # how resized frames travel: uint8 (rounded to whole levels; 4× smaller)
                                       # | float32 (never rounded: the official order's result, see
                                       # docs/ARCHITECTURE.md "Precision note")


@dataclass(frozen=True)
class DecodeConfig:
    backend: str = "pyav"              # pyav | decord
    mode: str = "exact"                # exact (every planned frame; the default: as fast as "fast" on
                                       # x264's default b-pyramid streams, see BENCHMARKS.md) | fast
                                       # (reference frames only, each sample snapped ≤ max_snap frames)
    max_snap: int = 2                  # fast mode: furthest a sample may move to a decodable frame (frames)
    timeout_s: float = 600.0           # watchdog: a decode with no progress this long fails the video;
                                       # <= 0 decodes in-process, without the watchdog
    threads: int = 1                   # decoder threads per worker; 0 = FFmpeg picks
    centre_crop: bool = False          # frames come back cut to the centre size×size crop (what the
                                       # pipeline feeds the model with one crop): the same pixels as
                                       # resizing whole frames and cropping, about half the resize work
                                       # (a frame size that changes mid-stream: each frame is cut from
                                       # its own geometry, not refitted to the first frame's)


@dataclass(frozen=True)
class RunConfig:
    batch_size: int = 0                # clips per inference batch; 0 = 4 on GPU, 1 on CPU
    num_actors: int = 0                # inference actors; 0 = one per GPU, else 1 on CPU
    num_decoders: int = 0              # decode tasks at once; 0 = as many as CPUs (and memory) allow
    decode_memory_mb: int = 1024       # memory reserved per decode task (scheduling, not a hard limit)
    decode_resources: dict = field(default_factory=dict)   # custom Ray resources per decode task, e.g.
                                       # {"decode": 1} to decode only on nodes that declare them (cluster.yaml)
    videos_per_task: int = 0           # videos one decode task takes in steady state; 0 = picked from the
                                       # corpus size (at most ~4,100 tasks; see feed.py)
    commit_every: int = 64             # videos (and failures) per committed part, at most: what a kill redoes
    drain_s: float = 60.0              # on SIGTERM / SIGINT, seconds the clips in flight may take to finish
    metrics_port: int = 0              # an embedded run serves Ray's Prometheus metrics on 127.0.0.1:PORT
                                       # (0: not served; a cluster's nodes serve their own, metrics.py)
    metrics_linger_s: float = 15.0     # ... and keeps serving the final values this long after the run
    compact: bool = True               # merge small committed parts into large files at the end of a run
    compact_target_mb: int = 256       # size of a compacted segment's largest file (its HDF5 file)
    max_failure_rate: float = 1.0      # fail the run when more than this fraction of videos fails
    retry_failed: bool = False
    retry_transient: bool = True       # redo videos whose failure may pass (io, timeout, lost, inference)
    redo_changed: bool = False         # re-extract committed videos whose manifest uri changed (retire.py)
    address: str | None = None         # Ray address; None = RAY_ADDRESS or an embedded local Ray


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_preset(cls, name: str | None = None, **model_kw: Any) -> "Config":
        """The config a preset implies: its sampling and preprocessing, everything else at defaults."""
        p = get_preset(name)
        return cls(
            model=ModelConfig(preset=p.name, **model_kw),
            sampling=SamplingConfig(num_frames=p.num_frames, stride=p.stride, target_fps=p.target_fps),
            preprocess=PreprocessConfig(size=p.img_size, mean=p.mean, std=p.std),
        )

    def replace(self, **sections: dict[str, Any]) -> "Config":
        """A copy with some fields of some sections changed: `cfg.replace(run={"batch_size": 8})`."""
        changed = {}
        for name, values in sections.items():
            section = getattr(self, name)
            changed[name] = dataclasses.replace(section, **values)
        return dataclasses.replace(self, **changed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Preset first (`model.preset`), then every other given field on top; unknown keys are errors."""
        data = dict(data or {})
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown config sections: {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        base = cls.from_preset((data.get("model") or {}).get("preset"))
        sections = {}
        for f in fields(cls):
            values = dict(data.get(f.name) or {})
            known = {x.name for x in fields(getattr(base, f.name))}
            bad = set(values) - known
            if bad:
                raise ValueError(f"unknown keys in config section {f.name!r}: {sorted(bad)}; known: {sorted(known)}")
            sections[f.name] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return base.replace(**sections)

    @classmethod
    def from_yaml(cls, path: str) -> "Config":
        import fsspec
        import yaml

        with fsspec.open(path, "r") as fh:
            return cls.from_dict(yaml.safe_load(fh) or {})

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def feature_fields(self) -> dict[str, Any]:
        """What changes the numbers written: model identity, sampling, preprocessing, decode mode."""
        return {
            "model": {"preset": self.model.preset, "checkpoint": self.model.checkpoint, "seed": self.model.seed},
            "sampling": dataclasses.asdict(self.sampling),
            "preprocess": _plain(_without_defaults(dataclasses.asdict(self.preprocess), NEW_DEFAULTS)),
            "decode": {"mode": self.decode.mode, "max_snap": self.decode.max_snap},
        }

    def fingerprint(self, checkpoint_sha256: str | None = None) -> str:
        """Short hash of `feature_fields()` (plus the checkpoint's content hash when known)."""
        payload = self.feature_fields()
        if checkpoint_sha256:
            payload["model"] = {**payload["model"], "checkpoint": checkpoint_sha256}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Fields added after outputs existed: they enter the fingerprint only when set away from their default,
# so outputs written before they existed keep their fingerprint (and can be resumed).
NEW_DEFAULTS = {"frame_dtype": "uint8"}


def _without_defaults(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in defaults or v != defaults[k]}


def _plain(obj: Any) -> Any:
    """Tuples → lists, recursively, for YAML/JSON."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
