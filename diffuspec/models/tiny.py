"""Small random Qwen2-style models for tests, the CPU quickstart and benchmarks.

The verifier is a plain ``Qwen2ForCausalLM``; the diffusion drafter is the same class with
``config.is_causal = False`` (transformers then builds a bidirectional attention mask), which is exactly
how Dream-format checkpoints load (Qwen2 weights, bidirectional attention, shifted logits).
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def tiny_qwen2_config(
    vocab_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    causal: bool = True,
    eos_token_id: int | list[int] | None = None,
    **extra,
) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        is_causal=causal,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def tiny_qwen2(
    seed: int = 0, dtype: torch.dtype = torch.float32, init_std: float | None = None, **config_kwargs
) -> Qwen2ForCausalLM:
    """A random tiny Qwen2 model in eval mode. ``init_std`` widens the logits of random tests (sharper lattices)."""
    config = tiny_qwen2_config(**config_kwargs)
    if init_std is not None:
        config.initializer_range = init_std
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(dtype)
    return model.eval()
