"""Dream checkpoints (Dream-v0-Base/Instruct-7B and the Dream format) as native bidirectional Qwen2 models.

Dream is Qwen2.5 run with full attention and the AR logit shift kept: its weights use the Qwen2 names
exactly (``model.layers.{i}.self_attn.q_proj`` ...), its attention always has q/k/v biases and no o_proj or
MLP bias, and head_dim is hidden_size / num_attention_heads. Its remote code breaks on transformers 5 (RoPE
init under transformers 5's rope parameters), so we map ``config.json`` onto ``Qwen2Config(is_causal=False)`` instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from ..files import replace_folder_atomically
from .weights import (
    build_from_state_dict,
    load_with_from_pretrained,
    parse_size,
    read_checkpoint,
    set_bidirectional,
    write_checkpoint,
)

DREAM_MASK_TOKEN_ID = 151666  # Dream-v0 default when config.json has no mask_token_id
_DEFAULT_ROPE_THETA = 10_000.0  # DreamConfig's default


def qwen2_config_from_dream(dream: dict[str, Any]) -> Qwen2Config:
    """Translate Dream ``config.json`` fields into a bidirectional ``Qwen2Config``."""
    if dream.get("mlp_bias"):
        raise ValueError("Dream config has mlp_bias=true; Dream/Qwen2 MLPs have no bias, so this is not Dream")
    hidden, heads = dream["hidden_size"], dream["num_attention_heads"]
    if dream.get("head_dim") not in (None, hidden // heads):
        raise ValueError(f"Dream head_dim must be hidden_size // num_attention_heads = {hidden // heads}")
    rope = {"rope_type": "default", "rope_theta": float(dream.get("rope_theta", _DEFAULT_ROPE_THETA))}
    if dream.get("rope_scaling"):
        scaling = dict(dream["rope_scaling"])
        scaling["rope_type"] = scaling.pop("type", scaling.get("rope_type"))
        rope.update(scaling)
    return Qwen2Config(
        vocab_size=dream["vocab_size"],
        hidden_size=hidden,
        intermediate_size=dream["intermediate_size"],
        num_hidden_layers=dream["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=dream.get("num_key_value_heads") or heads,
        hidden_act=dream.get("hidden_act", "silu"),
        max_position_embeddings=dream["max_position_embeddings"],
        initializer_range=dream.get("initializer_range", 0.02),
        rms_norm_eps=dream.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(dream.get("tie_word_embeddings", False)),
        rope_parameters=rope,
        use_sliding_window=bool(dream.get("use_sliding_window", False)),
        sliding_window=dream.get("sliding_window"),
        max_window_layers=dream.get("max_window_layers", dream["num_hidden_layers"]),
        attention_dropout=dream.get("attention_dropout", 0.0),
        bos_token_id=dream.get("bos_token_id"),
        eos_token_id=dream.get("eos_token_id"),
        pad_token_id=dream.get("pad_token_id"),
        use_cache=False,  # a drafter re-reads the whole canvas every pass
        is_causal=False,
    )


def load_dream(
    folder: Path,
    dream: dict[str, Any],
    *,
    dtype: torch.dtype | None,
    device: torch.device,
    quantization_config: Any | None = None,
) -> tuple[Qwen2ForCausalLM, int, bool]:
    """Load a Dream folder strictly; returns (model, mask_token_id, shifted=True).

    With a ``quantization_config`` (transformers' ``BitsAndBytesConfig``) the weights go through
    ``from_pretrained``, which quantizes them while loading; Dream's tensor names are Qwen2's, so no renaming.
    """
    config = qwen2_config_from_dream(dream)
    mask_token_id = int(dream.get("mask_token_id", DREAM_MASK_TOKEN_ID))
    if not 0 <= mask_token_id < config.vocab_size:
        raise ValueError(f"Dream mask_token_id {mask_token_id} is outside the vocabulary [0, {config.vocab_size})")
    if quantization_config is not None:
        model = load_with_from_pretrained(
            Qwen2ForCausalLM,
            config,
            folder,
            device=device,
            dtype=dtype,
            quantization_config=quantization_config,
            zero_keys=frozenset(
                _qkv_bias_keys(config.num_hidden_layers) if dream.get("attention_bias") is False else ()
            ),
        )
        set_bidirectional(model)
        return model, mask_token_id, True
    state = read_checkpoint(folder, device=device, dtype=dtype)
    if dream.get("attention_bias") is False:
        _add_zero_qkv_biases(state, config.num_hidden_layers)
    model = build_from_state_dict(Qwen2ForCausalLM, config, state, source=str(folder), device=device)
    set_bidirectional(model)
    return model, mask_token_id, True


def _add_zero_qkv_biases(state: dict[str, torch.Tensor], num_layers: int) -> None:
    """Dream's modeling code always builds q/k/v biases and zero-initialises any the checkpoint lacks.

    A config that says ``attention_bias: false`` (Dream-format exports of Llama-family models) therefore
    means zero biases; filling them in keeps the strict key check meaningful for everything else.
    """
    for key in _qkv_bias_keys(num_layers):
        weight = state.get(key.removesuffix(".bias") + ".weight")
        if weight is not None and key not in state:
            state[key] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)


def _qkv_bias_keys(num_layers: int) -> list[str]:
    return [
        f"model.layers.{layer}.self_attn.{proj}.bias"
        for layer in range(num_layers)
        for proj in ("q_proj", "k_proj", "v_proj")
    ]


# ---------------------------------------------------------------- saving


def dream_config_from_model(config: transformers.PreTrainedConfig, mask_token_id: int, dtype: torch.dtype) -> dict:
    """The Dream ``config.json`` for a bidirectional Qwen2 or Llama drafter, with Dream's field names."""
    rope = dict(config.rope_parameters or {})
    rope_theta = float(rope.pop("rope_theta", _DEFAULT_ROPE_THETA))
    rope_type = rope.pop("rope_type", "default")
    rope_scaling = None if rope_type == "default" and not rope else {"rope_type": rope_type, **rope}
    use_sliding_window = bool(getattr(config, "use_sliding_window", False))
    return {
        "architectures": ["DreamModel"],
        "model_type": "Dream",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "rms_norm_eps": config.rms_norm_eps,
        "use_cache": False,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "use_sliding_window": use_sliding_window,
        "sliding_window": getattr(config, "sliding_window", None) if use_sliding_window else None,
        "max_window_layers": getattr(config, "max_window_layers", config.num_hidden_layers),
        "attention_dropout": float(config.attention_dropout or 0.0),
        "mask_token_id": int(mask_token_id),
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": transformers.__version__,
    }


def _check_dream_compatible(model: PreTrainedModel) -> None:
    if getattr(model.config, "is_causal", True) is not False:
        raise ValueError("the Dream format holds bidirectional drafters; set config.is_causal = False first")
    check_dream_shape(model.config)


def check_dream_shape(config: transformers.PreTrainedConfig) -> None:
    """Refuse configs the Dream format cannot hold; reads only the config, so callers can check before loading."""
    if config.model_type not in ("qwen2", "llama"):
        raise ValueError(f"the Dream format is Qwen2-shaped; cannot write a {config.model_type!r} model")
    if config.model_type == "llama":
        if config.attention_bias or config.mlp_bias:
            raise ValueError("Llama models with attention_bias or mlp_bias have no Dream equivalent")
        if config.head_dim != config.hidden_size // config.num_attention_heads:
            raise ValueError("Dream derives head_dim = hidden_size // num_attention_heads; this model differs")


def save_dream_format(
    model: PreTrainedModel,
    tokenizer: Any | None,
    out_dir: str | os.PathLike,
    mask_token_id: int,
    *,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write a bidirectional Qwen2/Llama drafter as a Dream checkpoint, atomically.

    The result loads with ``load_diffusion_model`` (and has the published Dream field and tensor names), so
    trained drafters ship in the same format as the checkpoints people already have. Llama models get zero
    q/k/v biases, which is what Dream's attention computes for them. No ``auto_map`` is written: we do not
    ship Dream's remote modeling code.
    """
    _check_dream_compatible(model)
    if not 0 <= mask_token_id < model.config.vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary [0, {model.config.vocab_size})")
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # safetensors refuses shared storage; the loader re-ties
    if model.config.model_type == "llama":
        _add_zero_qkv_biases(state, model.config.num_hidden_layers)
    dtype = next(model.parameters()).dtype
    dream_config = dream_config_from_model(model.config, mask_token_id, dtype)
    shard_bytes = parse_size(max_shard_size)

    def fill(folder: Path) -> None:
        write_checkpoint(state, folder, shard_bytes)
        (folder / "config.json").write_text(json.dumps(dream_config, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))

    out_dir = Path(out_dir)
    replace_folder_atomically(fill, out_dir, overwrite)
    return out_dir
