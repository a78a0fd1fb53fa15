"""Named model + sampling + preprocessing presets (the paper's released models, and `tiny` for tests).

Each preset names the network shape, the sampling it was trained with (frames, stride at a target fps),
the preprocessing, and the official checkpoint file name. ``timesformer-l-howto100m`` is the default.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    img_size: int = 224
    num_frames: int = 8
    num_classes: int = 400
    attention_type: str = "divided_space_time"
    stride: int = 32                 # sample every `stride` frames of `target_fps`-normalised time
    target_fps: float = 30.0
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    checkpoint_file: str | None = None
    description: str = field(default="", compare=False)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "timesformer-l-howto100m", num_frames=96, num_classes=1059, stride=32,
            checkpoint_file="TimeSformer_divST_96x32_224_HowTo100M.pyth",
            description="TimeSformer-L on HowTo100M: 96 frames, one every 32 frames at 30 fps (102.4 s a clip)",
        ),
        Preset(
            "timesformer-l-k400", num_frames=96, num_classes=400, stride=4,
            checkpoint_file="TimeSformer_divST_96x4_224_K400.pyth",
            description="TimeSformer-L on Kinetics-400: 96 frames, stride 4",
        ),
        Preset(
            "timesformer-k400", num_frames=8, num_classes=400, stride=32,
            checkpoint_file="TimeSformer_divST_8x32_224_K400.pyth",
            description="TimeSformer (base) on Kinetics-400: 8 frames, stride 32",
        ),
        Preset(
            "timesformer-hr-k400", num_frames=16, img_size=448, num_classes=400, stride=16,
            checkpoint_file="TimeSformer_divST_16x16_448_K400.pyth",
            description="TimeSformer-HR on Kinetics-400: 16 frames at 448 px, stride 16",
        ),
        Preset(
            "tiny", embed_dim=64, depth=2, num_heads=1, img_size=32, num_frames=4, num_classes=10, stride=8,
            description="random-weight toy for tests and demos (depth 2, dim 64, 4 frames of 32 px)",
        ),
    )
}

DEFAULT_PRESET = "timesformer-l-howto100m"


def get_preset(name: str | None = None) -> Preset:
    """The preset called `name` (default: TimeSformer-L HowTo100M); a clear error for an unknown name."""
    name = name or DEFAULT_PRESET
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
