"""End-of-sequence ids: read once from a model, a folder or a tokenizer, as a tuple, and honoured one way.

Generation stops at the first emitted EOS and nothing after it is ever drafted, kept or stored.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

import torch

Tokens = TypeVar("Tokens", list, torch.Tensor)


def as_eos_ids(eos: int | Sequence[int] | None) -> tuple[int, ...]:
    """``None`` -> ``()``, an int -> ``(int,)``, a list -> a tuple of ints."""
    if eos is None:
        return ()
    if isinstance(eos, int):
        return (int(eos),)
    return tuple(int(e) for e in eos)


def model_eos_ids(model: Any, tokenizer: Any = None) -> tuple[int, ...]:
    """What ``generate`` stops on: the model's generation config, else the tokenizer's eos."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = getattr(tokenizer, "eos_token_id", None)
    return as_eos_ids(eos)


def folder_eos_ids(folder: str | os.PathLike, tokenizer: Any = None) -> tuple[int, ...]:
    """``model_eos_ids`` of a model folder, read without loading its weights."""
    from transformers import AutoConfig, GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:  # no generation_config.json: transformers derives one from config.json
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(folder))
    eos = generation.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    return as_eos_ids(eos)


def pad_token_id(tokenizer: Any, eos: Sequence[int]) -> int:
    """A pad id for transformers' batched calls: the tokenizer's, else the first EOS, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    return int(pad if pad is not None else (eos[0] if eos else 0))


def cut_after_eos(tokens: Tokens, eos: Collection[int]) -> Tokens:
    """Keep the tokens up to and including the first EOS (a list or a 1-D tensor, returned as it came)."""
    if not eos:
        return tokens
    if isinstance(tokens, torch.Tensor):
        hits = torch.nonzero(torch.isin(tokens, torch.tensor(list(eos), dtype=tokens.dtype, device=tokens.device)))
        return tokens[: int(hits[0, 0]) + 1] if hits.numel() else tokens
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens
