"""LLaDA checkpoints (LLaDA-8B-Base/Instruct) as native bidirectional Llama models.

LLaDA's OLMo-derived ``LLaDALlamaBlock`` computes exactly a Llama decoder layer: pre-RMSNorm, separate
q/k/v projections with rotate-half RoPE, no bias, and the MLP ``ff_out(silu(ff_proj(x)) * up_proj(x))``,
i.e. ``ff_proj`` is the SwiGLU gate and both ``ff_proj`` and ``up_proj`` have ``mlp_hidden_size`` rows
(12288 for the 8B model; the activation is plain ``silu``, so there is no halving). Only the names
differ, so we rename tensors and build ``LlamaForCausalLM(is_causal=False)``. Logits are unshifted.

Config fields that change the computation must be present and hold the LLaDA-8B values; we refuse other
OLMo variants (fused ``att_proj``, biases, q/k layer norms, ALiBi, logit scaling) instead of guessing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .weights import build_from_state_dict, load_with_from_pretrained, read_checkpoint, set_bidirectional

LLADA_MASK_TOKEN_ID = 126336  # <|mdm_mask|>

# Fields that must be written out, with the value our Llama mapping computes.
_REQUIRED = {
    "block_type": "llama",
    "activation_type": "silu",
    "layer_norm_type": "rms",
    "rope": True,
    "include_bias": False,
}
# Fields that may be absent; when present they must hold the harmless value.
_IF_PRESENT = {
    "alibi": False,
    "include_qkv_bias": False,
    "bias_for_layer_norm": False,
    "attention_layer_norm": False,
    "input_emb_norm": False,
    "scale_logits": False,
    "layer_norm_with_affine": True,
    "block_group_size": 1,
    "clip_qkv": None,
    "norm_after": False,
}

_BLOCK_NAMES = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_proj": "mlp.gate_proj",  # SwiGLU gate: silu is applied to this one
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ff_norm": "post_attention_layernorm",
}
_TOP_NAMES = {
    "model.transformer.wte.weight": "model.embed_tokens.weight",
    "model.transformer.ln_f.weight": "model.norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}
# The same renaming as llama_key_from_llada, as transformers' ``from_pretrained(key_mapping=...)`` regexes.
LLADA_KEY_MAPPING = {
    **{re.escape(old): new for old, new in _TOP_NAMES.items()},
    **{rf"model\.transformer\.blocks\.(\d+)\.{old}\.": rf"model.layers.\1.{new}." for old, new in _BLOCK_NAMES.items()},
}
_BLOCK_KEY = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)")


def llama_key_from_llada(name: str) -> str:
    """LLaDA tensor name -> Llama tensor name; unknown names pass through and then fail the strict check."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    match = _BLOCK_KEY.fullmatch(name)
    if match and match.group(2) in _BLOCK_NAMES:
        layer, module, kind = match.groups()
        return f"model.layers.{layer}.{_BLOCK_NAMES[module]}.{kind}"
    return name


def llama_config_from_llada(llada: dict[str, Any]) -> LlamaConfig:
    """Translate LLaDA ``config.json`` into a bidirectional ``LlamaConfig``, refusing other variants."""
    for field in ("d_model", "n_layers", "n_heads", "vocab_size", "rope_theta", "weight_tying", *_REQUIRED):
        if field not in llada:
            raise ValueError(f"LLaDA config.json lacks {field!r}; it changes the architecture, so we do not guess")
    for field, value in _REQUIRED.items():
        if llada[field] != value:
            raise ValueError(f"unsupported LLaDA variant: {field}={llada[field]!r} (supported: {value!r})")
    for field, value in _IF_PRESENT.items():
        if field in llada and llada[field] != value:
            raise ValueError(f"unsupported LLaDA variant: {field}={llada[field]!r} (supported: {value!r})")
    heads = llada["n_heads"]
    kv_heads = llada.get("n_kv_heads") or (1 if llada.get("multi_query_attention") else heads)
    if llada.get("mlp_hidden_size") is not None:
        intermediate = llada["mlp_hidden_size"]
    elif "mlp_ratio" in llada:
        intermediate = llada["mlp_ratio"] * llada["d_model"]
    else:
        raise ValueError("LLaDA config.json lacks both mlp_hidden_size and mlp_ratio")
    return LlamaConfig(
        vocab_size=llada.get("embedding_size") or llada["vocab_size"],  # rows of wte / ff_out
        hidden_size=llada["d_model"],
        intermediate_size=intermediate,
        num_hidden_layers=llada["n_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_act="silu",
        max_position_embeddings=llada.get("max_sequence_length", 4096),
        initializer_range=llada.get("init_std", 0.02),
        rms_norm_eps=llada.get("rms_norm_eps", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": float(llada["rope_theta"])},
        tie_word_embeddings=bool(llada["weight_tying"]),
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=llada.get("bos_token_id"),  # explicit: LlamaConfig's defaults (1, 2) would be wrong
        eos_token_id=llada.get("eos_token_id"),
        pad_token_id=llada.get("pad_token_id"),
        use_cache=False,
        is_causal=False,
    )


def load_llada(
    folder: Path,
    llada: dict[str, Any],
    *,
    dtype: torch.dtype | None,
    device: torch.device,
    quantization_config: Any | None = None,
) -> tuple[LlamaForCausalLM, int, bool]:
    """Load a LLaDA folder strictly; returns (model, mask_token_id, shifted=False).

    With a ``quantization_config`` (transformers' ``BitsAndBytesConfig``) the weights go through
    ``from_pretrained`` with ``LLADA_KEY_MAPPING``, which quantizes them while loading.
    """
    config = llama_config_from_llada(llada)
    mask_token_id = int(llada.get("mask_token_id", LLADA_MASK_TOKEN_ID))
    if not 0 <= mask_token_id < config.vocab_size:
        raise ValueError(f"LLaDA mask_token_id {mask_token_id} is outside the vocabulary [0, {config.vocab_size})")
    if quantization_config is not None:
        model = load_with_from_pretrained(
            LlamaForCausalLM,
            config,
            folder,
            device=device,
            dtype=dtype,
            quantization_config=quantization_config,
            rename=llama_key_from_llada,
            key_mapping=LLADA_KEY_MAPPING,
        )
        set_bidirectional(model)
        return model, mask_token_id, False
    state = read_checkpoint(folder, rename=llama_key_from_llada, device=device, dtype=dtype)
    model = build_from_state_dict(LlamaForCausalLM, config, state, source=str(folder), device=device)
    set_bidirectional(model)
    return model, mask_token_id, False
