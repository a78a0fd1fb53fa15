"""The network against HF transformers (an independent implementation of the same paper) and timm's ViT.

Every parameter is randomised — the official init zeroes `temporal_fc`, which would leave the temporal
path untested — and the checkpoint goes through the same files a user would have: HF keys, the official
`.pyth` layout (`model_state` with `model.` prefixes) and a plain state dict.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch

from pipeline.model import TimeSformer, load_timesformer
from pipeline.model.timesformer import resize_pos_embed, resize_time_embed

TOL = 1e-5
HEADS = 4


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: LayerNorm weights around 1, everything else N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_weight = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(1 + 0.1 * noise if is_norm_weight else 0.1 * noise)
    return model.eval()


def hf_model(attention_type="divided_space_time", frames=4, image=32, patch=8, layers=2, labels=7):
    """A random HF Timesformer; the test that builds one is skipped where transformers is missing (the
    other tests of this module do not need it)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.TimesformerConfig(
        image_size=image, patch_size=patch, num_frames=frames, hidden_size=64, num_hidden_layers=layers,
        num_attention_heads=HEADS, intermediate_size=256, num_labels=labels, attention_type=attention_type,
    )
    return randomise_(transformers.TimesformerForVideoClassification(cfg))


def hf_outputs(model, x):
    """x: ours [B, 3, T, H, W] → HF's (CLS after final norm, logits)."""
    with torch.no_grad():
        out = model.timesformer(x.permute(0, 2, 1, 3, 4))
        cls = out.last_hidden_state[:, 0]
        return cls, model.classifier(cls)


def our_outputs(model, x):
    with torch.no_grad():
        emb = model.forward_features(x)
        return emb, model.forward_head(emb)


def as_official_pyth(hf_state: dict) -> dict:
    """The same weights under official names, in the official `.pyth` layout."""
    from pipeline.model.checkpoint_keys import to_timesformer_keys

    official = {f"model.{k}": v for k, v in to_timesformer_keys(hf_state).items()}
    return {"epoch": 15, "model_state": official, "optimizer_state": {}, "cfg": "MODEL:\n  NUM_CLASSES: 7\n"}


@pytest.fixture(scope="module")
def clip():
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_hf_keys_match_hf_outputs(tmp_path, clip, attention_type):
    ref = hf_model(attention_type)
    path = tmp_path / "hf.bin"
    torch.save(ref.state_dict(), path)
    ours = load_timesformer(str(path), num_heads=HEADS)
    assert ours.attention_type == attention_type
    for got, want in zip(our_outputs(ours, clip), hf_outputs(ref, clip)):
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_official_pyth_matches_hf_outputs(tmp_path, clip):
    ref = hf_model()
    path = tmp_path / "TimeSformer_divST_4x8_32.pyth"
    torch.save(as_official_pyth(ref.state_dict()), path)
    ours = load_timesformer(str(path), num_heads=HEADS)
    for got, want in zip(our_outputs(ours, clip), hf_outputs(ref, clip)):
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_plain_and_headless_state_dicts(tmp_path, clip):
    ref = hf_model()
    plain = {k.removeprefix("model."): v for k, v in as_official_pyth(ref.state_dict())["model_state"].items()}
    torch.save(plain, tmp_path / "plain.pt")
    ours = load_timesformer(str(tmp_path / "plain.pt"), num_heads=HEADS)
    torch.testing.assert_close(our_outputs(ours, clip)[0], hf_outputs(ref, clip)[0], atol=TOL, rtol=0)
    backbone = {k: v for k, v in ref.state_dict().items() if not k.startswith("classifier.")}
    torch.save(backbone, tmp_path / "backbone.pt")
    headless = load_timesformer(str(tmp_path / "backbone.pt"), num_heads=HEADS)
    emb, logits = our_outputs(headless, clip)
    torch.testing.assert_close(emb, hf_outputs(ref, clip)[0], atol=TOL, rtol=0)
    assert logits.shape == (2, 0)


def test_space_only_equals_per_frame_vit_averaged(clip):
    """Space-only TimeSformer = a ViT on every frame, CLS averaged over frames, then the final norm."""
    timm = pytest.importorskip("timm")
    ours = randomise_(TimeSformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=HEADS,
                                  num_frames=4, num_classes=7, attention_type="space_only"))
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=HEADS, num_classes=7, qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    vit.load_state_dict(ours.state_dict())
    frames = clip.permute(0, 2, 1, 3, 4).flatten(0, 1)                        # (b t) c h w
    with torch.no_grad():
        x = vit._pos_embed(vit.patch_embed(frames))
        cls = vit.blocks(x)[:, 0].reshape(2, 4, -1).mean(1)
        want = vit.norm(cls)
        torch.testing.assert_close(ours.forward_features(clip), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_sdpa_equals_manual_attention(clip, attention_type):
    model = randomise_(TimeSformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=HEADS,
                                   num_frames=4, num_classes=7, attention_type=attention_type))
    with torch.no_grad():
        fused = model.forward_features(clip)
        model.set_fused_attn(False)
        manual = model.forward_features(clip)
    assert not torch.equal(fused, torch.zeros_like(fused))
    torch.testing.assert_close(fused, manual, atol=TOL, rtol=0)


def test_time_embed_resize_is_1d_nearest():
    te = torch.arange(4.0).reshape(1, 4, 1).expand(1, 4, 3)
    assert resize_time_embed(te, 8)[0, :, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert resize_time_embed(te, 2)[0, :, 0].tolist() == [0, 2]
    assert resize_time_embed(te, 4) is te


def test_pos_embed_resize_is_2d_grid_nearest():
    grid = torch.arange(4.0)                                   # a 2×2 grid: [[0, 1], [2, 3]]
    pe = torch.cat((torch.tensor([-1.0]), grid)).reshape(1, 5, 1)
    out = resize_pos_embed(pe, 4, 6)[0, :, 0]
    assert out[0] == -1                                        # CLS entry untouched
    want = [[float(2 * (r * 2 // 4) + (c * 2 // 6)) for c in range(6)] for r in range(4)]
    assert out[1:].reshape(4, 6).tolist() == want


def hf_on_bigger_input(ref, frames: int, image: int):
    """HF's model laid out for `frames` × `image` inputs but holding `ref`'s embeddings, as a checkpoint
    run on a bigger input: HF's forward resizes them on the fly (1-D nearest over time, 2-D nearest over
    the patch grid), as the official forward does. (HF's blocks read the frame and grid counts from their
    config, so they are built for the bigger input; their weights do not depend on it.)"""
    big = hf_model(frames=frames, image=image)
    big.timesformer.embeddings = copy.deepcopy(ref.timesformer.embeddings)
    big.load_state_dict(ref.state_dict())
    return big.eval()


@pytest.mark.parametrize("frames, image", [(8, 48), (3, 40)])
def test_frame_and_size_overrides_match_the_official_forward_rule(tmp_path, frames, image):
    """Loading with num_frames/img_size overrides (embeddings resized once, at load), and the model loaded
    without them run on the bigger input (resized on the fly) = HF's reference model running the original
    checkpoint on the bigger input."""
    ref = hf_model()
    path = tmp_path / "hf.bin"
    torch.save(ref.state_dict(), path)
    base = load_timesformer(str(path), num_heads=HEADS)
    bigger = load_timesformer(str(path), num_heads=HEADS, num_frames=frames, img_size=image)
    grid = image // 8
    assert bigger.time_embed.shape[1] == frames and bigger.pos_embed.shape[1] == 1 + grid * grid
    x = torch.randn(2, 3, frames, image, image, generator=torch.Generator().manual_seed(2))
    want = hf_outputs(hf_on_bigger_input(ref, frames, image), x)
    for model in (bigger, base):
        for got, expected in zip(our_outputs(model, x), want):
            torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


def test_random_weights_are_seeded():
    x = torch.randn(1, 3, 4, 32, 32)
    a, b = load_timesformer("random", preset="tiny"), load_timesformer("random", preset="tiny")
    c = load_timesformer("random", preset="tiny", seed=1)
    assert torch.equal(our_outputs(a, x)[0], our_outputs(b, x)[0])
    assert not torch.allclose(our_outputs(a, x)[0], our_outputs(c, x)[0])
    assert any(blk.temporal_fc.weight.abs().sum() > 0 for blk in list(a.blocks)[1:])


def test_random_weights_roundtrip_through_a_file(tmp_path):
    model = load_timesformer("random", preset="tiny", seed=3)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    again = load_timesformer(str(tmp_path / "tiny.pt"))
    x = torch.randn(2, 3, 4, 32, 32)
    assert again.arch == model.arch
    assert torch.equal(our_outputs(model, x)[0], our_outputs(again, x)[0])
