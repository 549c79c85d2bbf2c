"""Turn a causal decoder LM into the starting point of a Dream-style diffusion drafter.

Dream was initialised from Qwen2.5 and kept its AR logit shift; drafters trained the same way start from the
verifier family's lower layers. The copy keeps the first ``num_layers`` decoder layers, switches to full
attention and, unless the vocabulary already has one, gains a mask token whose embedding is the mean row
(a neutral input that carries no token identity). Training (diffuspec.training) does the rest.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel

from .weights import set_bidirectional


def adapt_ar_to_diffusion(
    model: PreTrainedModel, *, num_layers: int | None = None, mask_token_id: int | None = None
) -> tuple[PreTrainedModel, int]:
    """A bidirectional, shifted-logit copy of ``model`` cut to ``num_layers``; returns (drafter, mask id).

    ``model`` (a Qwen2/Llama-family ``*ForCausalLM``) is not modified. A ``mask_token_id`` inside the
    vocabulary is reused as is; otherwise one embedding row is appended and its id returned.
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} is not a decoder-only *ForCausalLM with model.layers")
    total = len(layers)
    keep = total if num_layers is None else num_layers
    if not 1 <= keep <= total:
        raise ValueError(f"num_layers must be in [1, {total}], got {num_layers}")

    # Deep-copy everything except the dropped layers (the memo maps them to None), so adapting 4 layers of a
    # 32B verifier does not first duplicate all of it.
    memo = {id(layer): None for layer in layers[keep:]}
    drafter = copy.deepcopy(model, memo)
    drafter.model.layers = nn.ModuleList(drafter.model.layers[i] for i in range(keep))
    drafter.config.num_hidden_layers = keep
    if getattr(drafter.config, "layer_types", None) is not None:
        drafter.config.layer_types = list(drafter.config.layer_types[:keep])
    set_bidirectional(drafter)

    rows = drafter.get_input_embeddings().weight.shape[0]
    if mask_token_id is not None and 0 <= mask_token_id < rows:
        return drafter, int(mask_token_id)
    if mask_token_id is not None and mask_token_id != rows:
        raise ValueError(
            f"mask_token_id {mask_token_id} is neither in the vocabulary [0, {rows}) nor the next id {rows}"
        )
    _append_mean_row(drafter, rows)
    return drafter, rows


@torch.no_grad()
def _append_mean_row(model: PreTrainedModel, rows: int) -> None:
    """Grow the vocabulary by one id whose input (and untied output) row is the mean of the existing rows."""
    input_mean = model.get_input_embeddings().weight.float().mean(dim=0)
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    output_mean = None if output is None or tied else output.weight.float().mean(dim=0)

    model.resize_token_embeddings(rows + 1, mean_resizing=False)
    embedding = model.get_input_embeddings().weight
    embedding[rows] = input_mean.to(embedding.dtype)
    if output_mean is not None:
        head = model.get_output_embeddings()
        head.weight[rows] = output_mean.to(head.weight.dtype)
        if getattr(head, "bias", None) is not None:
            head.bias[rows] = head.bias[:rows].float().mean().to(head.bias.dtype)
