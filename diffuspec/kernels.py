"""CPU inference kernels: float32 linear layers whose weights are packed once for oneDNN.

On a CPU, torch's default float32 matrix product for a few rows (a verify pass of 2-16 tokens) costs much more per
row than for one row. oneDNN with the weight already in its own blocked layout is faster at every row count
measured (``eval/verify_cost.py`` on the SmolLM2 verifier: one token 5% faster, 2-8 tokens 21-38% faster), and it
still sums in float32, so greedy tokens do not change. ``prepack_linear_layers`` gives each plain ``nn.Linear`` a
packed copy of its weight and a forward that reads it.

The dense weight stays, so code that reads it (a drafter borrowing the verifier's LM head, a draft vocabulary's
rows) works as before; the packed copy doubles the linear layers' memory. It is a snapshot of the weights: for
inference after loading, never while training.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def _packed_linear(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.mkldnn_linear(x.contiguous().to_mkldnn(), weight, bias).to_dense()


def prepack_linear_layers(model: nn.Module) -> int:
    """Route every float32 CPU ``nn.Linear`` of ``model`` (subclasses such as adapters or quantized layers are left
    alone) through oneDNN with a weight packed now; returns how many layers it changed."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False)")
    packed = 0
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if type(module) is not nn.Linear or weight.device.type != "cpu" or weight.dtype != torch.float32:
                continue
            bias = None if module.bias is None else module.bias.detach().clone()
            module.forward = functools.partial(_packed_linear, weight.detach().to_mkldnn(), bias)
            packed += 1
    return packed
