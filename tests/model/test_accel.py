"""Inference speed-ups keep the numbers: bf16 matmul weights, compiled blocks, chunked pinned uploads.

CPU tests cover the logic (autocast on the CPU casts Linear and Conv2d to bf16 the same way CUDA's does;
torch.compile with a recording backend gets the same graphs as inductor and runs them as they are, so a
test sees what was compiled and that the compiled code ran). The CUDA tests (pinned double buffers,
inductor, CUDA graphs) are skipped without a GPU.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import pytest
import torch

from pipeline.config import Config, ModelConfig
from pipeline.run.infer import ClipEmbedder, prepare_model
from pipeline.model import TimeSformer
from pipeline.model.accel import cast_matmul_weights_, compile_blocks, compiled_forward
from pipeline.run.upload import ChunkUploader

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def random_model(attention_type: str = "divided_space_time", seed: int = 0) -> TimeSformer:
    """A small TimeSformer with every parameter random (biases and LayerNorms too)."""
    torch.manual_seed(seed)
    model = TimeSformer(img_size=32, patch_size=8, num_classes=7, embed_dim=64, depth=3, num_heads=4,
                        num_frames=4, attention_type=attention_type)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1 if name.endswith("weight") and "norm" in name else 0) + 0.1 * torch.randn_like(p))
    return model.eval()


def clip_batch(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def forward(model, x, forward_fn=None, device="cpu", amp=True):
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
        emb = (forward_fn or model.forward_features)(x)
        return emb.float(), model.forward_head(emb).float()


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_bf16_matmul_weights_are_bit_identical_under_autocast(attention_type):
    model, x = random_model(attention_type), clip_batch()
    cast = copy.deepcopy(model)
    assert cast_matmul_weights_(cast) == sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in model.modules())
    assert cast.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16 and cast.patch_embed.proj.bias.dtype == torch.bfloat16
    assert cast.norm.weight.dtype == torch.float32 and cast.pos_embed.dtype == torch.float32
    ref, out = forward(model, x), forward(cast, x)
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
    assert not torch.equal(ref[0], forward(model, x, amp=False)[0])      # autocast did change the numbers


class RecordingBackend:
    """A torch.compile backend that keeps every graph dynamo hands it and counts the runs of the code it
    returns (the graph itself, run eagerly): a test sees what was compiled and that the compiled code ran."""

    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []
        self.runs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs) -> Callable:
        self.graphs.append(gm)

        def run(*args):
            self.runs += 1
            return gm.forward(*args)
        return run

    def ops(self) -> set[str]:
        """The names of the functions and methods the recorded graphs call."""
        return {getattr(n.target, "__name__", str(n.target)) for g in self.graphs for n in g.graph.nodes
                if n.op in ("call_function", "call_method")}


@pytest.fixture()
def backend():
    """A fresh RecordingBackend, with dynamo's caches emptied before and after (no graph of another test
    is reused, and no test meets the recompile limit because of earlier ones)."""
    import torch._dynamo

    torch._dynamo.reset()
    yield RecordingBackend()
    torch._dynamo.reset()


def test_compiled_blocks_match_eager_and_all_blocks_share_one_graph(backend):
    model, x = random_model(), clip_batch()
    ref = forward(model, x, amp=False)
    compiled = compile_blocks(copy.deepcopy(model), backend=backend)
    forward(compiled, clip_batch(seed=2), amp=False)
    out = forward(compiled, x, amp=False)
    assert torch.allclose(out[0], ref[0], atol=1e-5) and torch.allclose(out[1], ref[1], atol=1e-5)
    assert len(backend.graphs) == 1 and backend.runs == 2 * len(model.blocks)   # three blocks, one graph
    assert {"linear", "scaled_dot_product_attention", "layer_norm"} <= backend.ops()


@pytest.mark.parametrize("attention_type", ["joint_space_time", "space_only"])
def test_compiled_blocks_of_other_attention_types_match_eager(backend, attention_type):
    model, x = random_model(attention_type), clip_batch()
    compiled = compile_blocks(copy.deepcopy(model), backend=backend)
    assert torch.allclose(forward(compiled, x, amp=False)[0], forward(model, x, amp=False)[0], atol=1e-5)
    assert len(backend.graphs) == 1 and backend.runs == len(model.blocks)


@pytest.mark.parametrize("scope, runs", [("model", 1), ("blocks", 3)])
def test_compiled_forward_scopes_match_eager(backend, scope, runs):
    """"model" compiles the whole forward into one graph run once a call (patch embedding and final
    norm in it too); "blocks" compiles one block graph, run once per block, the rest eager."""
    model, x = random_model(), clip_batch()
    fn = compiled_forward(copy.deepcopy(model), scope, backend=backend)
    assert torch.allclose(forward(model, x, fn, amp=False)[0], forward(model, x, amp=False)[0], atol=1e-5)
    assert len(backend.graphs) == 1 and backend.runs == runs
    assert ("conv2d" in backend.ops()) == (scope == "model")


def test_compiled_forward_names_bad_settings():
    model = random_model()
    with pytest.raises(ValueError, match="compile scope 'layers'"):
        compiled_forward(model, "layers")
    with pytest.raises(ValueError, match="compile mode 'fastest'"):
        compiled_forward(model, "blocks", "fastest")


def test_defaults_cast_matmul_weights_once_for_bf16_and_compile_nothing():
    m = ModelConfig()
    assert (m.compile, m.compile_scope, m.compile_mode, m.bf16_weights, m.upload_chunk) == \
        (False, "model", "default", True, 0)
    model, fn = prepare_model(random_model(), m, torch.device("cpu"), torch.bfloat16)
    assert model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16 and fn == model.forward_features
    model, _ = prepare_model(random_model(), m, torch.device("cpu"), torch.float32)
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32


def test_prepare_model_casts_weights_only_for_bf16_autocast():
    on = ModelConfig(bf16_weights=True)
    model, fn = prepare_model(random_model(), on, torch.device("cpu"), torch.bfloat16)
    assert model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16 and fn == model.forward_features
    model, _ = prepare_model(random_model(), on, torch.device("cpu"), torch.float32)
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32          # fp32 runs need fp32 weights


def test_prepare_model_compiles_on_cuda_only(monkeypatch, backend):
    """`compile` is a CUDA setting: on the CPU the eager forward comes back; on a (faked) CUDA device the
    forward over `compile_scope` is compiled (here by the recording backend instead of inductor)."""
    from pipeline.run import infer

    m, x = ModelConfig(compile=True, compile_scope="blocks"), clip_batch()
    model, fn = prepare_model(random_model(), m, torch.device("cpu"), torch.float32)
    assert fn == model.forward_features
    monkeypatch.setattr(infer, "compiled_forward", lambda *a, **kw: compiled_forward(*a, **kw, backend=backend))
    model = random_model()
    monkeypatch.setattr(model, "to", lambda device: model)               # stays on the CPU
    model, fn = prepare_model(model, m, torch.device("cuda"), torch.float32)
    assert torch.allclose(forward(model, x, fn, amp=False)[0], forward(random_model(), x, amp=False)[0], atol=1e-5)
    assert len(backend.graphs) == 1 and backend.runs == len(model.blocks)


@pytest.mark.parametrize("chunk", [0, 1, 2, 3, 9])
def test_uploader_chunks_cover_the_batch_in_order(chunk):
    frames = np.random.default_rng(0).integers(0, 256, (5, 1, 2, 4, 4, 3), dtype=np.uint8)
    parts = list(ChunkUploader("cpu", chunk).chunks(frames))
    assert [len(p) for p in parts] == ([5] if chunk in (0, 9) else [min(chunk, 5 - s) for s in range(0, 5, chunk)])
    assert np.array_equal(torch.cat(parts).numpy(), frames)
    with pytest.raises(ValueError, match="upload chunk"):
        ChunkUploader("cpu", -1)


def embedder(**model) -> ClipEmbedder:
    return ClipEmbedder(Config.from_preset("tiny", checkpoint="random", **model).to_dict())


def tiny_frames(batch: int, crops: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, crops, 4, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_embed_equals_whole_batch_embed(chunk):
    frames = tiny_frames(5, crops=3)
    emb, logits = embedder().embed(frames)
    emb_c, logits_c = embedder(upload_chunk=chunk).embed(frames)
    assert emb_c.shape == emb.shape == (5, 64) and logits_c.shape == (5, 10)
    assert np.allclose(emb_c, emb, atol=1e-5) and np.allclose(logits_c, logits, atol=1e-5)


@cuda
def test_pinned_uploads_deliver_every_chunk_exactly():
    frames = np.random.default_rng(0).integers(0, 256, (7, 1, 3, 16, 16, 3), dtype=np.uint8)
    uploader = ChunkUploader("cuda", 2)
    for _ in range(2):                                                    # the second pass reuses the buffers
        parts = [p.clone() for p in uploader.chunks(frames)]
        assert uploader.pinned and all(p.device.type == "cuda" for p in parts)
        assert np.array_equal(torch.cat(parts).cpu().numpy(), frames)


@cuda
@pytest.mark.parametrize("settings", [dict(upload_chunk=2), dict(bf16_weights=True), dict(compile=True),
                                      dict(compile=True, compile_scope="blocks", compile_mode="reduce-overhead",
                                           bf16_weights=True, upload_chunk=1)])
def test_cuda_speedups_keep_the_embeddings(settings):
    from torch._dynamo.utils import counters

    frames = tiny_frames(5)
    ref = embedder(precision="bf16", bf16_weights=False).embed(frames)
    torch._dynamo.reset()
    counters.clear()
    fast = embedder(precision="bf16", **settings)
    out = fast.embed(frames)
    assert (counters["stats"]["unique_graphs"] > 0) == settings.get("compile", False)   # inductor compiled
    for a, b in zip(out, ref):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 2e-2
    if settings == dict(bf16_weights=True):
        assert all(np.array_equal(a, b) for a, b in zip(out, ref))
    ray_out = fast.results(ray_batch(frames))                   # a read-only batch as Ray hands it
    assert np.allclose(ray_out["embedding"], out[0], atol=1e-2, rtol=1e-2)


def weight_casts(embedder: ClipEmbedder, frames: np.ndarray) -> int:
    """How many times one `embed` casts fc1's weight (aten::_to_copy of its shape), all blocks together."""
    from torch.profiler import ProfilerActivity, profile

    shape = list(embedder.model.blocks[0].mlp.fc1.weight.shape)
    embedder.embed(frames)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        embedder.embed(frames)
    return sum(1 for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes[:1] == [shape])


def test_bf16_runs_cast_no_weight_by_default_and_at_most_once_a_block_without_bf16_weights():
    frames = tiny_frames(2)
    default = embedder(precision="bf16")
    assert default.model.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert weight_casts(default, frames) == 0
    recast = embedder(precision="bf16", bf16_weights=False)
    # autocast's cast cache is off under inference_mode (two casts a block were measured there); embed
    # runs under no_grad, where each block's weight is cast once per forward
    assert weight_casts(recast, frames) == len(recast.model.blocks)
    emb, logits = default.embed(frames)
    emb_r, logits_r = recast.embed(frames)
    assert np.array_equal(emb, emb_r) and np.array_equal(logits, logits_r)       # the same numbers


def ray_batch(frames: np.ndarray, failed: tuple[int, ...] = ()) -> dict:
    """A batch as Ray hands it to the actor: the frames one read-only array over a shared buffer."""
    buffer = memoryview(frames.tobytes())                     # bytes: read-only, like the object store's
    shared = np.frombuffer(buffer, dtype=frames.dtype).reshape(frames.shape)
    n = len(frames)
    return {"video_id": np.array([f"v{i}" for i in range(n)], dtype=object),
            "error": np.array(["decode: bad" if i in failed else "" for i in range(n)], dtype=object),
            "stage": np.array(["decode" if i in failed else "" for i in range(n)], dtype=object),
            "frames": shared}


def test_a_ray_batch_reaches_the_model_without_a_host_copy(monkeypatch):
    e, batch = embedder(), ray_batch(tiny_frames(3))
    assert not batch["frames"].flags.writeable
    seen = []
    original = ChunkUploader.chunks

    def spy(self, frames):
        for part in original(self, frames):
            seen.append((frames, part))
            yield part
    monkeypatch.setattr(ChunkUploader, "chunks", spy)
    out = e.results(batch)
    (handed, tensor), = seen
    assert handed is batch["frames"]                                    # no np.stack, no copy
    assert tensor.data_ptr() == batch["frames"].ctypes.data              # the CPU "upload" is a view
    emb, _ = e.embed(tiny_frames(3))
    assert np.allclose(out["embedding"], emb, atol=1e-6)


def test_failed_rows_are_left_out_of_the_forward():
    e, frames = embedder(), tiny_frames(4)
    out = e.results(ray_batch(frames, failed=(1,)))
    emb, _ = e.embed(frames[[0, 2, 3]])
    assert np.allclose(out["embedding"][[0, 2, 3]], emb, atol=1e-6) and not out["embedding"][1].any()
    assert list(out["error"])[1] == "decode: bad"


def test_a_compiled_model_always_gets_full_batches(monkeypatch, backend):
    """A run's short last batch is padded to the batch size, so the compiled graph is not compiled again
    for it (the model is compiled here as prepare_model compiles it on CUDA, by the recording backend)."""
    e = embedder(compile=True)
    monkeypatch.setattr(e, "device", torch.device("cuda"))              # fixed_rows is a CUDA concern
    e.config = e.config.replace(run={"batch_size": 4})
    assert e.fixed_rows == 4
    monkeypatch.setattr(e, "device", torch.device("cpu"))
    compiled, rows = compiled_forward(e.model, backend=backend), []
    e.forward = lambda x: rows.append(len(x)) or compiled(x)
    e.embed(tiny_frames(4, seed=1))
    frames = tiny_frames(3)
    emb, logits = e.embed(frames)
    ref, ref_logits = embedder().embed(frames)
    assert rows == [4, 4] and emb.shape == (3, 64)
    assert len(backend.graphs) == 1 and backend.runs == 2                # one graph, never recompiled
    assert np.allclose(emb, ref, atol=1e-5) and np.allclose(logits, ref_logits, atol=1e-5)


def test_batches_over_the_fused_attention_limit_are_refused_before_the_run(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.model.limits import batch_problem, max_clips_per_forward
    from pipeline.run.runner import _check_batch

    assert max_clips_per_forward(224, 16) == 334 and max_clips_per_forward(224, 16, crops=3) == 111
    assert batch_problem(334, 0, 224, 16, 1) is None
    assert "65,535" in batch_problem(335, 0, 224, 16, 1)
    assert batch_problem(1000, 8, 224, 16, 3) is None                  # chunks of 8 clips are the forward
    big = Config.from_preset("timesformer-l-howto100m", checkpoint="random").replace(run={"batch_size": 400})
    with pytest.raises(ConfigError, match="at most 334 clips"):
        _check_batch(big)


def test_mean_and_std_are_made_once_per_device():
    from pipeline.decode.transforms import channel_vector

    e, frames = embedder(), tiny_frames(2)
    e.embed(frames)
    before = channel_vector.cache_info()
    e.embed(frames)
    e.embed(frames)
    after = channel_vector.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 4
