"""The TimeSformer network, its checkpoint loading and its presets."""
from pipeline.model.checkpoint import checkpoint_sha256, load_timesformer, random_timesformer, to_timesformer_keys
from pipeline.model.presets import DEFAULT_PRESET, PRESETS, Preset, get_preset
from pipeline.model.timesformer import TimeSformer

__all__ = ["TimeSformer", "load_timesformer", "random_timesformer", "to_timesformer_keys", "checkpoint_sha256",
           "Preset", "PRESETS", "DEFAULT_PRESET", "get_preset"]
