"""Checkpoint loading: strictness with names, clear errors for bad files, fsspec URLs, presets."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from pipeline.errors import CheckpointError
from pipeline.model import PRESETS, TimeSformer, load_timesformer, to_timesformer_keys
from pipeline.model.checkpoint_keys import infer_arch


@pytest.fixture()
def tiny_pyth(tmp_path):
    model = load_timesformer("random", preset="tiny")
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "tiny.pyth"
    torch.save({"epoch": 1, "model_state": state, "optimizer_state": {}, "cfg": "x: 1\n"}, path)
    return path, state


def save(path, obj):
    torch.save(obj, path)
    return str(path)


def test_missing_key_is_named(tmp_path, tiny_pyth):
    _, state = tiny_pyth
    state = dict(state)
    del state["model.blocks.1.temporal_attn.proj.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks\.1\.temporal_attn\.proj\.bias'\]"):
        load_timesformer(save(tmp_path / "m.pyth", {"model_state": state}))


def test_unexpected_key_is_named(tmp_path, tiny_pyth):
    _, state = tiny_pyth
    state = {**state, "model.blocks.0.extra_gate": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"unexpected keys \['blocks\.0\.extra_gate'\]"):
        load_timesformer(save(tmp_path / "u.pyth", {"model_state": state}))


def test_shape_mismatch_names_both_shapes(tmp_path, tiny_pyth):
    _, state = tiny_pyth
    state = {**state, "model.blocks.0.mlp.fc2.bias": torch.zeros(65)}
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.fc2\.bias: checkpoint \[65\] vs model \[64\]"):
        load_timesformer(save(tmp_path / "s.pyth", {"model_state": state}))


def test_another_model_is_refused(tmp_path):
    resnet_like = {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}
    with pytest.raises(CheckpointError, match=r"not a TimeSformer checkpoint.*conv1\.weight"):
        load_timesformer(save(tmp_path / "r.pt", resnet_like))


def test_missing_file_directory_and_garbage(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_timesformer(str(tmp_path / "nope.pyth"))
    with pytest.raises(CheckpointError, match="directory"):
        load_timesformer(str(tmp_path))
    junk = tmp_path / "junk.pyth"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="junk.pyth is not a torch checkpoint"):
        load_timesformer(str(junk))
    text = tmp_path / "notes.pyth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pyth"):
        load_timesformer(str(text))
    with pytest.raises(CheckpointError, match="no tensors"):
        load_timesformer(save(tmp_path / "empty.pt", {"epoch": 3}))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pyth"
    with open(path, "wb") as fh:
        pickle.dump({"model_state": {"cls_token": torch.zeros(1)}, "hook": _Evil()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="is refused: it is a pickle that would run or build Python objects "
                       r"\(.*system\)") as refused:
        load_timesformer(str(path))
    assert "weights_only=False" not in str(refused.value) and "add_safe_globals" not in str(refused.value)


def test_fsspec_url_with_local_cache(tmp_path, tiny_pyth):
    import fsspec
    path, _ = tiny_pyth
    url = "memory://ckpts/tiny.pyth"
    with fsspec.open(url, "wb") as fh:
        fh.write(path.read_bytes())
    cache = tmp_path / "cache"
    model = load_timesformer(url, cache_dir=str(cache))
    assert model.arch["embed_dim"] == 64 and any(cache.iterdir())
    with pytest.raises(CheckpointError, match="not found"):
        load_timesformer("memory://ckpts/absent.pyth", cache_dir=str(cache))


def test_key_mapping_is_pure_and_covers_hf_names():
    hf = {"timesformer.encoder.layer.3.temporal_dense.weight": 0, "classifier.bias": 1,
          "timesformer.embeddings.time_embeddings": 2, "encoder.layer.0.output.dense.bias": 3,
          "module.model.blocks.0.attn.qkv.weight": 4}
    assert to_timesformer_keys(hf) == {"blocks.3.temporal_fc.weight": 0, "head.bias": 1, "time_embed": 2,
                                       "blocks.0.mlp.fc2.bias": 3, "blocks.0.attn.qkv.weight": 4}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_describe_their_networks(name):
    preset = PRESETS[name]
    with torch.device("meta"):
        model = TimeSformer(img_size=preset.img_size, patch_size=preset.patch_size, num_classes=preset.num_classes,
                            embed_dim=preset.embed_dim, depth=preset.depth, num_frames=preset.num_frames)
    arch = infer_arch(model.state_dict())
    assert (arch["num_frames"], arch["img_size"], arch["num_classes"]) == (
        preset.num_frames, preset.img_size, preset.num_classes)
    assert preset.mean == (0.45,) * 3 and preset.std == (0.225,) * 3
    if name != "tiny":
        assert preset.checkpoint_file and preset.checkpoint_file.endswith(".pyth")
        assert arch["embed_dim"] == 768 and arch["depth"] == 12


def test_timesformer_l_token_count():
    p = PRESETS["timesformer-l-howto100m"]
    assert (p.num_frames, p.stride, p.target_fps, p.num_classes) == (96, 32, 30.0, 1059)
    assert 1 + (p.img_size // p.patch_size) ** 2 * p.num_frames == 18817


def test_bad_input_shape_names_the_sizes():
    model = load_timesformer("random", preset="tiny")
    with pytest.raises(ValueError, match="height 30 and width 32"):
        model.forward_features(torch.zeros(1, 3, 4, 30, 32))
