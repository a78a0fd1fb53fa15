"""The driver's checkpoint check (`check_checkpoint`) and the words for files torch will not load.

A checkpoint is checked before anything is written: the same reading, name mapping, architecture and
strict comparison as the inference actor's `load_timesformer`, on a model built on the `meta` device.
Whatever passes here loads there; whatever fails there for names, shapes or the file itself fails here
first, with the same message. A pickle that would run or build Python objects is refused with the
reason and the globals it names, never with torch's advice to load it with weights_only=False.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import warnings
import zipfile

import pytest
import torch

from pipeline.errors import CheckpointError, VidfeatError
from pipeline.model import check_checkpoint, load_timesformer
from pipeline.model.checkpoint import fit_problems
from pipeline.model.checkpoint_diagnosis import SHOWN

TINY = dict(preset="tiny", num_frames=4, img_size=32)          # what the inference actor passes for `tiny`
TORCH_ADVICE = ("weights_only=False", "weights_only` set to `False", "add_safe_globals", "safe_globals",
                "Check the documentation", "Please file an issue", "trusted source")


@pytest.fixture()
def tiny_state():
    """The tiny preset's random weights under the official names (`model.` prefix)."""
    model = load_timesformer("random", preset="tiny")
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def save_pyth(path, state, **kwargs):
    torch.save({"epoch": 1, "model_state": state, "optimizer_state": {}, "cfg": "x: 1\n"}, path, **kwargs)
    return str(path)


def both_fail(path, **kwargs) -> str:
    """The driver's check and the actor's load fail alike: the same CheckpointError message."""
    with pytest.raises(CheckpointError) as checked:
        check_checkpoint(path, **kwargs)
    kwargs.pop("preset", None)
    with pytest.raises(CheckpointError) as loaded:
        load_timesformer(path, **kwargs)
    assert str(checked.value) == str(loaded.value)
    assert isinstance(checked.value, VidfeatError)                  # the CLI's exit 2, no traceback
    return str(checked.value)


def assert_no_torch_advice(message: str) -> None:
    for words in TORCH_ADVICE:
        assert words not in message, f"torch's advice {words!r} leaked into {message!r}"


# --- what passes ------------------------------------------------------------------------------------

def test_random_passes_for_every_preset():
    for preset in ("tiny", "timesformer-l-howto100m", None):
        assert check_checkpoint("random", preset=preset, num_frames=96, img_size=224) is None


@pytest.mark.parametrize("overrides", [dict(), dict(num_frames=8, img_size=64), dict(num_frames=2, img_size=16)])
def test_tiny_random_weights_on_file_pass_and_load_with_the_same_arguments(tmp_path, tiny_state, overrides):
    path = save_pyth(tmp_path / "tiny.pyth", tiny_state)
    kwargs = {**TINY, **overrides}
    check_checkpoint(path, **kwargs)
    model = load_timesformer(path, **{k: v for k, v in kwargs.items() if k != "preset"})
    assert (model.num_frames, model.arch["img_size"]) == (kwargs["num_frames"], kwargs["img_size"])


def test_plain_and_hf_named_state_dicts_pass(tmp_path, tiny_state):
    plain = {k.removeprefix("model."): v for k, v in tiny_state.items()}
    check_checkpoint(save_pyth(tmp_path / "x.pyth", plain), **TINY)
    torch.save(plain, tmp_path / "plain.pt")
    check_checkpoint(str(tmp_path / "plain.pt"), **TINY)
    torch.save(plain, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)    # torch < 1.6 format
    check_checkpoint(str(tmp_path / "legacy.pt"), **TINY)
    assert load_timesformer(str(tmp_path / "legacy.pt")).arch["depth"] == 2


def test_check_reads_no_weights(tmp_path, tiny_state, monkeypatch):
    """The model is built on the meta device and the file is memory-mapped: no weights are allocated
    or copied (TimeSformer-L: +8 MiB and 0.15 s instead of +940 MiB and 3.8 s; see the report)."""
    path = save_pyth(tmp_path / "tiny.pyth", tiny_state)
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen["mmap"] = kwargs.get("mmap")
        return real_load(*args, **kwargs)

    built = []
    real_init = torch.nn.Module.__init__

    def record(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.setattr(torch.nn.Module, "__init__", record)
    check_checkpoint(path, **TINY)
    assert seen["mmap"] is True
    params = [p for m in built for p in m.parameters(recurse=False)]
    assert params and all(p.device.type == "meta" for p in params)


# --- names and shapes -------------------------------------------------------------------------------

def test_missing_block_is_named_with_a_count(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if not k.startswith("model.blocks.0.")}
    path = save_pyth(tmp_path / "noblock0.pyth", state)
    message = both_fail(path, **TINY)
    missing = [k.removeprefix("model.") for k in tiny_state if k.startswith("model.blocks.0.")]
    assert message.startswith(f"{path} does not fit the TimeSformer it describes (dim 64, depth 2")
    assert f"missing keys {missing[:SHOWN]!r} and {len(missing) - SHOWN} more ({len(missing)} in all)" in message
    assert "unexpected" not in message and "shape" not in message


def test_missing_last_blocks_pass_with_a_warning(tmp_path, tiny_state, caplog):
    """The architecture comes from the weights, so a checkpoint without its last block describes a
    shallower network: it loads, and the check warns that it is not the preset's network."""
    state = {k: v for k, v in tiny_state.items() if not k.startswith("model.blocks.1.")}
    path = save_pyth(tmp_path / "short.pyth", state)
    with caplog.at_level(logging.WARNING, logger="pipeline.model.checkpoint"):
        check_checkpoint(path, **TINY)
    assert "is not the network of preset tiny (depth 1 vs 2)" in caplog.text
    assert load_timesformer(path).arch["depth"] == 1


def test_unexpected_key_is_named(tmp_path, tiny_state):
    path = save_pyth(tmp_path / "extra.pyth", {**tiny_state, "model.blocks.0.extra_gate": torch.zeros(3)})
    message = both_fail(path, **TINY)
    assert message.endswith("unexpected keys ['blocks.0.extra_gate']")


def test_shape_mismatch_is_shown_side_by_side(tmp_path, tiny_state):
    state = {**tiny_state, "model.blocks.1.attn.qkv.weight": torch.zeros(192, 65),
             "model.blocks.0.mlp.fc2.bias": torch.zeros(65)}
    message = both_fail(save_pyth(tmp_path / "shape.pyth", state), **TINY)
    assert ("shape mismatches blocks.0.mlp.fc2.bias: checkpoint [65] vs model [64]; "
            "blocks.1.attn.qkv.weight: checkpoint [192, 65] vs model [192, 64]") in message


def test_all_three_kinds_together_with_counts(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if ".norm1." not in k}                       # 4 missing
    state.update({f"model.blocks.0.adapter{i}.weight": torch.zeros(2) for i in range(12)})    # 12 unexpected
    state.update({k: torch.zeros(v.shape[0] + 1) for k, v in tiny_state.items() if k.endswith("fc1.bias")})
    message = both_fail(save_pyth(tmp_path / "mess.pyth", state), **TINY)
    assert "missing keys ['blocks.0.norm1.weight', 'blocks.0.norm1.bias', 'blocks.1.norm1.weight', " in message
    assert "'blocks.0.adapter9.weight'] and 2 more (12 in all)" in message
    assert "blocks.1.mlp.fc1.bias: checkpoint [257] vs model [256]" in message


def test_another_architecture_is_refused_by_name(tmp_path):
    resnet = {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}
    torch.save(resnet, tmp_path / "resnet.pt")
    message = both_fail(str(tmp_path / "resnet.pt"), **TINY)
    assert message.startswith(f"{tmp_path / 'resnet.pt'}: not a TimeSformer checkpoint: missing ['cls_token', ")
    assert "conv1.weight" in message
    hf_vit = {"vit.embeddings.cls_token": torch.zeros(1, 1, 64),
              "vit.embeddings.position_embeddings": torch.zeros(1, 5, 64),
              "vit.embeddings.patch_embeddings.projection.weight": torch.zeros(64, 3, 16, 16)}
    torch.save(hf_vit, tmp_path / "vit.pt")
    assert "not a TimeSformer checkpoint" in both_fail(str(tmp_path / "vit.pt"), **TINY)


def test_an_image_vit_loads_as_space_only_and_the_check_warns(tmp_path, caplog):
    """A timm ViT's names are TimeSformer's without the time parts: it is a valid space-only TimeSformer
    (the architecture comes from the weights), so it passes, with a warning against the preset."""
    with torch.device("meta"):
        from pipeline.model import TimeSformer
        vit = TimeSformer(img_size=32, patch_size=16, num_classes=10, embed_dim=64, depth=2,
                          attention_type="space_only")
    state = {k: torch.zeros(v.shape) for k, v in vit.state_dict().items()}
    torch.save(state, tmp_path / "vit.pt")
    with caplog.at_level(logging.WARNING, logger="pipeline.model.checkpoint"):
        check_checkpoint(str(tmp_path / "vit.pt"), **TINY)
    assert "attention_type space_only vs divided_space_time" in caplog.text


def test_fit_problems_is_pure_and_empty_when_it_fits():
    expected = {"a": (2, 3), "b": (4,)}
    assert fit_problems(expected, {"a": torch.zeros(2, 3), "b": torch.zeros(4)}) == []
    assert fit_problems(expected, {"a": torch.zeros(3, 2), "c": torch.zeros(1)}) == [
        "missing keys ['b']", "unexpected keys ['c']", "shape mismatches a: checkpoint [3, 2] vs model [2, 3]"]


# --- files torch will not load -----------------------------------------------------------------------

class _RunsCode:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Config:                                    # an arbitrary object, as training scripts pickle them
    def __init__(self):
        self.lr = 0.1


class _StateDict(collections.OrderedDict):        # an OrderedDict subclass (torch refuses those too)
    pass


def _helper():                                    # a function reference
    return 1


def _pickles(tmp_path, state):
    """(file, the global the refusal must name) for pickles that would run or build Python objects."""
    marker = tmp_path / "ran"
    _RunsCode.marker = str(marker)
    out = []
    for protocol in (2, 4, 5):                    # pickle.dump's default is 4 (5 since 3.8 for some)
        path = tmp_path / f"runs_code_p{protocol}.pkl"
        with open(path, "wb") as fh:
            pickle.dump({"model_state": {"cls_token": [0.0]}, "hook": _RunsCode()}, fh, protocol=protocol)
        out.append((str(path), f"{os.system.__module__}.system"))
    out.append((save_pyth(tmp_path / "object.pyth", {**state, "cfg": _Config()}), f"{__name__}._Config"))
    path = tmp_path / "subclass.pt"
    torch.save(_StateDict(state), path)
    out.append((str(path), f"{__name__}._StateDict"))
    path = tmp_path / "function.pt"
    torch.save({"state_dict": state, "make": _helper}, path)
    out.append((str(path), f"{__name__}._helper"))
    path = tmp_path / "object_p4.pt"
    torch.save({"state_dict": state, "cfg": _Config()}, path, pickle_protocol=4)
    out.append((str(path), f"{__name__}._Config"))
    path = tmp_path / "legacy_object.pt"
    torch.save({"state_dict": state, "cfg": _Config()}, path, _use_new_zipfile_serialization=False)
    out.append((str(path), f"{__name__}._Config"))
    return out, marker


def test_a_pickle_that_builds_objects_is_refused_with_the_reason(tmp_path, tiny_state):
    cases, marker = _pickles(tmp_path, tiny_state)
    for path, named in cases:
        message = both_fail(path, **TINY)
        assert message.startswith(f"{path} is refused: it is a pickle that would run or build Python objects (")
        assert named in message, message
        assert ("vidfeat loads checkpoints with weights_only=True and accepts only tensors and plain containers: "
                "re-save it as a plain state dict (torch.save(model.state_dict(), path)) in a trusted environment"
                ) in message
        assert_no_torch_advice(message)
    assert not marker.exists(), "a refused pickle ran its code"


def test_truncated_checkpoints_say_so(tmp_path, tiny_state):
    good = save_pyth(tmp_path / "good.pyth", tiny_state)
    data = open(good, "rb").read()
    for cut in (100, 1000, 30000, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{cut}.pyth"
        path.write_bytes(data[:cut])
        message = both_fail(str(path), **TINY)
        assert message == (f"{path} is truncated or damaged: it starts as a zip archive (the torch checkpoint "
                           f"format) but its zip directory, at the end of the file, is missing ({cut:,} bytes): an "
                           f"interrupted download or copy?")
    legacy = tmp_path / "legacy.pt"
    plain = {k.removeprefix("model."): v for k, v in tiny_state.items()}
    torch.save(plain, legacy, _use_new_zipfile_serialization=False)
    data = legacy.read_bytes()
    for cut in (3, 50, 1000, len(data) - 5):
        path = tmp_path / f"legacy_cut{cut}.pt"
        path.write_bytes(data[:cut])
        message = both_fail(str(path), **TINY)
        assert message.startswith(f"{path} is truncated: its data ends early (a torch checkpoint in the legacy "
                                  f"format, {cut:,} bytes"), message
        assert_no_torch_advice(message)


def test_files_that_are_not_checkpoints_are_named(tmp_path):
    def write(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    other_zip = tmp_path / "other.pyth"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
        archive.writestr("weights/notes.md", "hi")
    with open(tmp_path / "dict.pkl", "wb") as fh:
        pickle.dump({"lr": 0.1, "epochs": [1, 2]}, fh, protocol=4)
    cases = {
        write("empty.pyth", b""): "is empty (0 bytes), not a checkpoint: an interrupted download or copy?",
        write("notes.pyth", b"hello world\nmore\n"): "is not a torch checkpoint: it is text, beginning 'hello world'",
        write("page.pyth", b"<!DOCTYPE html><html><body>Access denied</body></html>"):
            "an error page or a response saved in place of the file?",
        write("lfs.pyth", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 486000000\n"):
            "a Git LFS pointer, not the file: fetch it with `git lfs pull`",
        str(other_zip): "is a zip archive, not a torch checkpoint (it holds readme.txt, weights/notes.md)",
        write("noise.pyth", b"\xbe\xb2\xb2\x78" + bytes(range(256)) * 4):
            "is not a torch checkpoint (it begins with bytes be b2 b2 78 00 01 02 03; UnpicklingError: ",
        str(tmp_path / "dict.pkl"): "is not a torch checkpoint: a Python pickle (protocol 4) that holds no tensors",
    }
    for path, words in cases.items():
        message = both_fail(path, **TINY)
        assert message.startswith(path) and words in message, message
        assert_no_torch_advice(message)


def test_protocol_4_torch_save_is_named(tmp_path, tiny_state):
    """torch.save(pickle_protocol=4) writes a file torch's safe loader cannot read (torch 2.14)."""
    path = save_pyth(tmp_path / "p4.pyth", tiny_state, pickle_protocol=4)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(path, weights_only=True)
    except Exception:                                                     # noqa: BLE001
        message = both_fail(path, **TINY)
        assert "saved with pickle protocol 4, which torch's safe loader cannot read" in message
        assert_no_torch_advice(message)
    else:                                                                 # a torch that reads it: it passes
        check_checkpoint(path, **TINY)


def test_missing_file_and_directory(tmp_path):
    assert both_fail(str(tmp_path / "nope.pyth"), **TINY) == f"checkpoint not found: {tmp_path / 'nope.pyth'}"
    assert "directory" in both_fail(str(tmp_path), **TINY)


def test_a_wrong_checkpoint_stops_extract_before_anything_is_written(tmp_path, corpus):
    """Exit 2 naming the keys, in the driver: no Ray started, no output pinned; the right one then runs."""
    import torch

    from pipeline.model import load_timesformer

    from conftest import run_cli

    sd = load_timesformer("random", preset="tiny").state_dict()
    sd.pop("blocks.1.mlp.fc2.weight")
    sd["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    out = tmp_path / "out"
    result = run_cli("extract", corpus["dir"], "--out", str(out), "--preset", "tiny", "--checkpoint", str(bad),
                     "--no-progress", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "blocks.1.mlp.fc2.weight" in result.stderr and "extra.weight" in result.stderr
    assert "Traceback" not in result.stderr and not (out / "run.json").exists()
    assert not (out / "videos").exists()
