"""Inference speed-ups that keep the network's numbers: weights cast once for autocast, regional compile.

`cast_matmul_weights_` stores the weight and bias of every Linear and Conv2d in the autocast dtype once,
instead of autocast casting them again on every call. Under autocast of that dtype the outputs are
bit-identical: autocast casts every input of these ops to it, and casting a tensor already of that dtype
is the identity; LayerNorm, the embeddings and everything autocast runs in float32 stay float32. Such a
model must then run under autocast (a float32 input would not match its bf16 weights).

`compile_blocks` compiles each transformer block instead of the whole forward (regional compilation):
the blocks are alike, so one compiled graph serves all of them and compiling takes about a depth-th of
the whole network's time; what runs between blocks (patch embedding, final norm) stays eager.
`compiled_forward` picks the scope ("model": today's `torch.compile(forward_features)`, or "blocks").
With `mode="reduce-overhead"` inductor also captures CUDA graphs; the forward it returns then marks each
call as a new step, so outputs of an earlier call are never overwritten while the caller still reads them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

MATMUL_MODULES = (nn.Linear, nn.Conv2d)
COMPILE_SCOPES = ("model", "blocks")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def cast_matmul_weights_(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Cast the parameters of every Linear and Conv2d of `model` to `dtype`, in place; how many modules."""
    modules = [m for m in model.modules() if isinstance(m, MATMUL_MODULES)]
    for module in modules:
        module.to(dtype)
    return len(modules)


def compile_blocks(model: nn.Module, **compile_kw) -> nn.Module:
    """Compile every block of a TimeSformer in place (the path its forward takes); returns `model`."""
    for block in model.blocks:
        if model.attention_type == "divided_space_time":
            block.forward_divided = torch.compile(block.forward_divided, **compile_kw)
        else:
            block.compile(**compile_kw)
    return model


def compiled_forward(model: nn.Module, scope: str = "model", mode: str = "default", **compile_kw) -> Callable:
    """`model.forward_features`, compiled over `scope` ("model" or "blocks") with torch.compile's `mode`."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope {scope!r} is not one of {COMPILE_SCOPES}")
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is not one of {COMPILE_MODES}")
    kw = {**compile_kw, "mode": None if mode == "default" else mode}
    if scope == "model":
        forward = torch.compile(model.forward_features, **kw)
    else:
        forward = compile_blocks(model, **kw).forward_features
    return _new_step_each_call(forward) if mode == "reduce-overhead" else forward


def _new_step_each_call(forward: Callable) -> Callable:
    def call(x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return forward(x)
    return call
