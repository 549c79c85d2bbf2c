"""The DFlash draft-checkpoint format: public DFlash drafters load as :class:`ConditionedDrafterModel`, and
diffuspec's conditioned drafters are written back in it for serving engines (vLLM ``method: dflash``, SGLang
``DFLASH``).

A DFlash checkpoint is a ``Qwen3Config`` with ``architectures: ["DFlashDraftModel"]`` and the weights of the draft
layers only (``fc``, ``hidden_norm``, per layer attention with per-head q/k norms and a gated MLP, a final
``norm``); the embedding and LM head are the target's. The two formats describe one computation; the fields map as

=================================================  ===========================================================
DFlash                                             diffuspec (``ConditionedDrafterConfig``)
=================================================  ===========================================================
``block_size`` (the anchor plus its masks)         ``block_size + 1`` (diffuspec counts draft slots)
``dflash_config.target_layer_ids``: id i reads     ``feature_layers``: layer i reads ``hidden_states[i]``,
``hidden_states[i + 1]``                           so ``feature_layers = [i + 1 for i in target_layer_ids]``
``num_target_layers``                              ``verifier_num_hidden_layers``
``dflash_config.mask_token_id``                    ``mask_token_id``
``is_causal``                                      ``attention_causal``
``layer_types``, ``sliding_window``, ``head_dim``,  the same names
``attention_bias``, ``hidden_act``, embedding
scale, output multiplier, logit softcap
``rope_parameters`` (``default``, ``linear``,      ``rope_parameters``; ``dynamic`` and ``longrope``, whose
``llama3``, ``yarn``)                              frequencies follow the sequence length, are refused
=================================================  ===========================================================

Rounds anchor the same way in both: the block starts with the newest committed token (the verifier's bonus token)
and the context holds the target's states of every token before it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen3Config
from transformers.activations import ACT2FN

from ..cards import write_dflash_card
from ..dtypes import load_dtype
from ..files import replace_folder_atomically
from .conditioned import ConditionedDrafterConfig, ConditionedDrafterModel, unsupported_rope
from .weights import load_with_from_pretrained, parse_size, write_checkpoint

__all__ = [
    "DFLASH_ARCHITECTURE",
    "config_from_dflash",
    "dflash_config",
    "export_dflash",
    "is_dflash_checkpoint",
    "load_dflash_drafter",
    "serving_commands",
]

DFLASH_ARCHITECTURE = "DFlashDraftModel"
# Variants of the format whose computation diffuspec's drafter does not have: refused by name, never half-loaded.
UNSUPPORTED_ARCHITECTURES = {
    "DFlash2DraftModel": "its grouped dynamic convolutions and candidate selector are not implemented in diffuspec",
}
DEFAULT_BLOCK_SIZE = 16  # the reference's value when a config names none


def _architectures(raw: dict[str, Any]) -> list[str]:
    return list(raw.get("architectures") or [])


def is_dflash_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder/config.json`` declares a DFlash draft model (of any variant, supported or not)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    architectures = _architectures(json.loads(path.read_text(encoding="utf-8")))
    return any(a == DFLASH_ARCHITECTURE or a in UNSUPPORTED_ARCHITECTURES for a in architectures)


def default_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """The format's target layers when a config lists none: the middle layer for one draft layer, else ids spread
    evenly from 1 to ``num_target_layers - 3``."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    first, last = 1, num_target_layers - 3
    return [round(first + i * (last - first) / (num_draft_layers - 1)) for i in range(num_draft_layers)]


def _dflash_value(raw: dict[str, Any], name: str, default: Any = None) -> Any:
    """A DFlash setting: ``dflash_config`` first, then the top level (where older checkpoints put it)."""
    nested = raw.get("dflash_config") or {}
    return nested[name] if name in nested else raw.get(name, default)


def config_from_dflash(raw: dict[str, Any], verifier_name: str | None = None) -> ConditionedDrafterConfig:
    """The :class:`ConditionedDrafterConfig` of a DFlash ``config.json`` (as a dict); anything that would change
    the computation and that diffuspec does not implement is refused by name (ValueError)."""
    architectures = _architectures(raw)
    for name in architectures:
        if name in UNSUPPORTED_ARCHITECTURES:
            raise ValueError(f"DFlash architecture {name!r} is not supported: {UNSUPPORTED_ARCHITECTURES[name]}")
    if DFLASH_ARCHITECTURE not in architectures:
        raise ValueError(
            f"not a DFlash draft checkpoint: architectures {architectures}, expected {DFLASH_ARCHITECTURE}"
        )
    qwen3 = Qwen3Config.from_dict({k: v for k, v in raw.items() if k != "architectures"})
    rope = dict(qwen3.rope_parameters or {})
    rope_problem = unsupported_rope(rope)
    if rope_problem is not None:
        raise ValueError(f"DFlash checkpoint's RoPE is not computed by diffuspec: {rope_problem}")
    if qwen3.hidden_act not in ACT2FN:
        raise ValueError(f"DFlash checkpoint's hidden_act {qwen3.hidden_act!r} is not a transformers activation")
    mask_token_id = _dflash_value(raw, "mask_token_id")
    if mask_token_id is None:
        raise ValueError("DFlash checkpoint has no dflash_config.mask_token_id: its mask slots cannot be filled")
    num_target_layers = raw.get("num_target_layers")
    if num_target_layers is None:
        raise ValueError("DFlash checkpoint has no num_target_layers: the target it reads is unknown")
    target_layer_ids = _dflash_value(raw, "target_layer_ids") or default_target_layer_ids(
        int(num_target_layers), qwen3.num_hidden_layers
    )
    block_size = int(_dflash_value(raw, "block_size", DEFAULT_BLOCK_SIZE))
    if block_size < 2:
        raise ValueError(f"DFlash block_size {block_size} drafts nothing: it counts the anchor, so it must be >= 2")
    layer_types = list(qwen3.layer_types) if qwen3.layer_types else None
    sliding = layer_types is not None and "sliding_attention" in layer_types
    softcap = _dflash_value(raw, "final_logit_softcapping")
    return ConditionedDrafterConfig(
        hidden_size=qwen3.hidden_size,
        num_hidden_layers=qwen3.num_hidden_layers,
        num_attention_heads=qwen3.num_attention_heads,
        num_key_value_heads=qwen3.num_key_value_heads,
        head_dim=qwen3.head_dim,
        intermediate_size=qwen3.intermediate_size,
        hidden_act=qwen3.hidden_act,
        qk_norm=True,
        attention_bias=bool(qwen3.attention_bias),
        layer_types=layer_types,
        sliding_window=qwen3.sliding_window if sliding else None,
        attention_causal=raw.get("is_causal"),
        rms_norm_eps=qwen3.rms_norm_eps,
        rope_parameters=rope,
        max_position_embeddings=qwen3.max_position_embeddings,
        vocab_size=qwen3.vocab_size,
        mask_token_id=int(mask_token_id),
        block_size=block_size - 1,
        input_embedding_scale=float(_dflash_value(raw, "input_embedding_scale", 1.0)),
        output_multiplier=float(_dflash_value(raw, "output_multiplier", 1.0)),
        final_logit_softcapping=float(softcap) if softcap is not None and float(softcap) > 0 else None,
        verifier_name=verifier_name,
        verifier_hidden_size=qwen3.hidden_size,
        verifier_num_hidden_layers=int(num_target_layers),
        feature_layers=[int(i) + 1 for i in target_layer_ids],
    )


def load_dflash_drafter(
    folder: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    verifier_name: str | None = None,
) -> ConditionedDrafterModel:
    """A DFlash checkpoint folder as a :class:`ConditionedDrafterModel` (no remote code). Every tensor name and
    shape is checked against the translated config before loading; a missing or extra tensor is an error naming
    it. Attach the verifier (``attach_verifier``) before drafting."""
    raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    config = config_from_dflash(raw, verifier_name=verifier_name)
    return load_with_from_pretrained(
        ConditionedDrafterModel,
        config,
        folder,
        device=torch.device(device),
        dtype=load_dtype(dtype),
        quantization_config=None,
    )


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------


def dflash_config(config: ConditionedDrafterConfig) -> Qwen3Config:
    """The DFlash ``Qwen3Config`` of a diffuspec drafter config; what the format cannot express is refused."""
    if not config.qk_norm:
        raise ValueError(
            "this drafter predates per-head q/k norms (qk_norm=False), which every DFlash checkpoint has: retrain "
            "it with the current ConditionedDrafterConfig to export it"
        )
    if 0 in config.feature_layers:
        raise ValueError(
            f"feature layer 0 (the embedding output) of {config.feature_layers} has no DFlash target_layer_id: "
            "DFlash reads hidden_states[i + 1] for ids i >= 0"
        )
    if config.verifier_num_hidden_layers is None:
        raise ValueError("the drafter records no verifier layer count; DFlash needs num_target_layers")
    if config.stem_size:
        raise ValueError(
            f"this drafter has an anchor stem (stem_size={config.stem_size}), which DFlash's format has no place for: "
            "train one with stem_size=0 to export it"
        )
    values: dict[str, Any] = {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.intermediate_size,
        "hidden_act": config.hidden_act,
        "attention_bias": config.attention_bias,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": dict(config.rope_parameters),
        "max_position_embeddings": config.max_position_embeddings,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": False,
    }
    if config.layer_types is not None:
        values["layer_types"] = list(config.layer_types)
        if "sliding_attention" in config.layer_types:
            values["use_sliding_window"] = True
            values["sliding_window"] = config.sliding_window
    qwen3 = Qwen3Config(**values)
    qwen3.architectures = [DFLASH_ARCHITECTURE]
    qwen3.block_size = config.block_size + 1
    qwen3.num_target_layers = config.verifier_num_hidden_layers
    qwen3.dflash_config = {
        "mask_token_id": config.mask_token_id,
        "target_layer_ids": [i - 1 for i in config.feature_layers],
    }
    if config.attention_causal is not None:
        qwen3.is_causal = config.attention_causal
    if config.input_embedding_scale != 1.0:
        qwen3.input_embedding_scale = config.input_embedding_scale
    if config.output_multiplier != 1.0:
        qwen3.output_multiplier = config.output_multiplier
    if config.final_logit_softcapping is not None:
        qwen3.final_logit_softcapping = config.final_logit_softcapping
    return qwen3


def serving_commands(verifier: str, drafter: str, block_size: int) -> dict[str, str]:
    """Shell commands that serve ``verifier`` with the exported ``drafter`` (DFlash ``block_size``: anchor + masks)."""
    speculative = json.dumps({"method": "dflash", "model": drafter, "num_speculative_tokens": block_size - 1})
    return {
        "vllm": f"vllm serve {verifier} --speculative-config '{speculative}'",
        "sglang": (
            f"python -m sglang.launch_server --model-path {verifier} --speculative-algorithm DFLASH "
            f"--speculative-draft-model-path {drafter}"
        ),
    }


def export_dflash(
    model: ConditionedDrafterModel,
    output_dir: str | os.PathLike,
    *,
    verifier: str | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Write ``model`` as a DFlash checkpoint folder (config, safetensors, a model card with the serving
    commands), atomically: readers see no folder or a complete one. ``verifier`` defaults to the recorded one."""
    qwen3 = dflash_config(model.config)  # refuses before anything is written
    verifier = verifier or model.config.verifier_name
    if not verifier:
        raise ValueError("name the verifier the drafter serves with (verifier=...): the drafter records none")
    state = model.state_dict()
    limit = parse_size(max_shard_size)

    def fill(folder: Path) -> None:
        qwen3.save_pretrained(folder)
        write_checkpoint(state, folder, limit)
        name = repo_id or Path(output_dir).resolve().name
        commands = serving_commands(verifier, name, qwen3.block_size)
        write_dflash_card(folder, verifier=verifier, name=name, block_size=qwen3.block_size, commands=commands)

    return replace_folder_atomically(fill, output_dir, overwrite=overwrite)
