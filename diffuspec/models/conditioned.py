"""ConditionedDrafterModel: a few-layer block drafter that reads the verifier's hidden states (DFlash-style).

The model drafts a block anchored at position ``a`` (the newest committed token) in one pass:

1. Fusion. The verifier states of ``config.feature_layers`` at positions ``0..a-1``, concatenated to
   ``[a, len(feature_layers) * verifier_hidden_size]``, go through one linear map (``fc``) and an RMSNorm
   (``hidden_norm``): the context memory ``c`` ``[a, hidden_size]``.
2. K/V injection. Every draft layer projects ``c`` with its own ``k_proj`` / ``v_proj`` (per-head ``k_norm``, then
   RoPE at the absolute positions ``0..a-1``) and puts these keys/values before the block's own keys/values.
3. The block is ``[token at a] + block_size`` mask slots at positions ``a..a+block_size``, embedded by the
   verifier's embedding matrix times ``input_embedding_scale`` (plus, with ``stem_size``, each slot's start state
   from the features of row ``a - 1`` and the token at ``a``: ``AnchorStem``). It attends bidirectionally within
   itself and to every memory position (a layer of ``layer_types`` "sliding_attention" is causal and windowed
   instead).
   Unshifted: the slot at ``a + i`` gives the distribution of the token at ``a + i``.
4. A final RMSNorm and the verifier's LM head give the logits (times ``output_multiplier``, then
   ``final_logit_softcapping``).

This is the DFlash draft architecture; ``diffuspec.models.dflash`` reads and writes its checkpoint format.
Drafters saved before per-head q/k norms existed load with ``qk_norm=False`` and compute what they did.

At inference the memory covers ``ids[:-1]`` (the verifier's features of every committed token but the pending
one) and the block starts with ``ids[-1]``, so ``a = n - 1``. Memory keys/values depend only on the committed
positions they come from, so :class:`ContextMemory` keeps them and each round projects the new rows only.
Training (:meth:`ConditionedDrafterModel.forward`) computes the same function for many anchors at once, with
a mask that lets the block of anchor ``a`` see memory positions ``< a``.

The verifier's embedding and LM head are borrowed, not owned: they are attached with
:meth:`ConditionedDrafterModel.attach_verifier` (or the ``verifier=`` constructor argument), stay out of the
state dict and the saved folder (a 7B verifier's two matrices are ~2.2 GB in bf16, far more than the drafter),
and are always frozen: updating them would change the verifier itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding
from transformers.utils import ModelOutput

__all__ = [
    "MAX_DRAFT_LAYERS",
    "ROPE_TYPES",
    "ConditionedDrafterConfig",
    "ConditionedDrafterModel",
    "ConditionedDrafterOutput",
    "ContextMemory",
    "SequenceMemory",
    "block_targets",
    "channel_rms",
    "check_verifier_compatible",
    "model_fingerprint",
    "spread_feature_layers",
    "unsupported_rope",
    "verifier_features",
]

logger = logging.getLogger(__name__)

MAX_DRAFT_LAYERS = 8  # a handful: every draft layer costs draft time in every round
LAYER_TYPES = ("full_attention", "sliding_attention")
LEGACY_KEYS = {r"^fusion_norm\.": "hidden_norm."}  # the fusion norm's name in drafters saved before the DFlash names
# RoPE types whose frequencies the config fixes: memory keys rotated once and cached stay right, so these are
# computed exactly as transformers (and the DFlash reference, through Qwen3's rotary embedding) compute them.
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# Types whose frequencies transformers recomputes from the current sequence length: refused by name.
LENGTH_DEPENDENT_ROPE = {
    "dynamic": "dynamic NTK scaling recomputes its frequencies whenever the sequence grows past "
    "max_position_embeddings",
    "longrope": "LongRoPE switches from its short to its long factors once the sequence passes "
    "original_max_position_embeddings",
}


def spread_feature_layers(num_verifier_layers: int, count: int = 3) -> list[int]:
    """``count`` verifier layers spread from low to high (EAGLE-3's low/mid/high fusion), never the embeddings.

    The last layer is included: it carries the verifier's own next-token information."""
    if num_verifier_layers < 1 or count < 1:
        raise ValueError(f"need >= 1 verifier layer and count >= 1, got {num_verifier_layers} and {count}")
    count = min(count, num_verifier_layers)
    if count == 1:
        return [num_verifier_layers]
    return sorted({1 + round(i * (num_verifier_layers - 1) / (count - 1)) for i in range(count)})


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def unsupported_rope(rope_parameters: dict) -> str | None:
    """Why the drafter cannot compute ``rope_parameters`` (a transformers 5 RoPE dict) exactly; None when it can.

    Shared by the config check and the DFlash import, so both refuse the same things with the same reason."""
    if any(isinstance(value, dict) for value in rope_parameters.values()):
        return "per-layer-type RoPE (a dict per layer type) is not supported: give one flat dict"
    rope_type = rope_parameters.get("rope_type", "default")
    if rope_type in LENGTH_DEPENDENT_ROPE:
        return (
            f"rope_type {rope_type!r} is not supported: {LENGTH_DEPENDENT_ROPE[rope_type]}, and the drafter's memory "
            "keys are rotated once and cached, so they cannot follow"
        )
    if rope_type not in ROPE_TYPES:
        return f"rope_type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
    if rope_parameters.get("partial_rotary_factor", 1.0) != 1.0:
        return "partial_rotary_factor must be 1.0: the drafter rotates whole heads"
    if not rope_parameters.get("rope_theta", 0) > 0:
        return "rope_theta must be > 0"
    return None


def verifier_rope_parameters(text_config: PreTrainedConfig) -> dict:
    """The drafter's RoPE for a verifier: a copy of the verifier's when the drafter computes it exactly, else
    default RoPE with the verifier's theta (logged). The drafter trains with its own RoPE, so the fallback is
    consistent; it only gives up matching the verifier's rotation, which drafters did before scaled RoPE."""
    rope = dict(getattr(text_config, "rope_parameters", None) or {})
    rope.setdefault("rope_type", "default")
    rope.setdefault("rope_theta", getattr(text_config, "rope_theta", None) or 10000.0)  # remote-code configs
    problem = unsupported_rope(rope)
    if problem is None:
        return rope
    theta = rope["rope_theta"]
    theta = float(theta) if isinstance(theta, (int, float)) and theta > 0 else 10000.0
    logger.warning("the verifier's RoPE %s: %s; the drafter uses default RoPE with rope_theta %s", rope, problem, theta)
    return {"rope_type": "default", "rope_theta": theta}


@strict
class ConditionedDrafterConfig(PreTrainedConfig):
    """Shape of the drafter plus a record of the verifier it was built for (checked when a verifier attaches).

    Defaults describe the tiny CPU shape (a Qwen2 verifier with hidden 256, 4 layers, vocab 2048); real pairs
    start from :meth:`for_verifier`, which copies the verifier's shape."""

    model_type = "diffuspec_conditioned"

    # -- draft layers --
    # Must equal verifier_hidden_size: the block is embedded by the verifier's embedding and read out by its LM head.
    hidden_size: int = 256
    # 1-5 layers (MAX_DRAFT_LAYERS): the drafter must stay a small fraction of a verifier step.
    num_hidden_layers: int = 1
    num_attention_heads: int = 8
    head_dim: int | None = None  # None: hidden_size // num_attention_heads (Qwen3 verifiers set it explicitly)
    # Grouped-query attention: the context-memory cache holds kv heads only, so fewer heads mean a smaller cache.
    num_key_value_heads: int = 2
    intermediate_size: int = 768  # SwiGLU width; the verifier's ratio (3x for the tiny shape) is a sane start
    hidden_act: str = "silu"  # the gated MLP's activation (a transformers ACT2FN name)
    # Per-head RMSNorm of queries and keys (memory keys too) before RoPE, as DFlash / Qwen3. Configs saved before
    # the field existed read as False (see from_dict), so old drafters compute what they did.
    qk_norm: bool = True
    attention_bias: bool = False  # biases on q/k/v/o projections
    # Per-layer attention kind (None: all "full_attention"): "sliding_attention" layers are causal and see keys
    # less than sliding_window positions back; attention_causal, when set, overrides causality for every layer.
    layer_types: list[str] | None = None
    sliding_window: int | None = None
    attention_causal: bool | None = None
    rms_norm_eps: float = 1e-6  # the verifier's, since the memory is built from its (RMS-normalised) states
    # RoPE as transformers 5 configs (Qwen3Config, LlamaConfig) hold it: rope_type, rope_theta and that type's
    # scaling keys, computed by transformers' own functions. for_verifier copies the verifier's: memory keys sit at
    # the verifier's absolute positions. None (and configs saved before the field): default RoPE with the legacy
    # top-level rope_theta, or 10000. Types that recompute frequencies per sequence length are refused (ROPE_TYPES,
    # LENGTH_DEPENDENT_ROPE).
    rope_parameters: dict | None = None
    # Largest position + 1 the drafter reads (block included); the verifier's context is the natural value.
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02  # std of freshly initialised draft weights (transformers' default)

    # -- tokens --
    vocab_size: int = 2048  # rows of the verifier's embedding and LM head, which the drafter borrows
    # Id whose (verifier) embedding fills the draft slots; never proposed. Must be set before building a model.
    mask_token_id: int | None = None
    # Draft slots per block. Bidirectional attention makes a slot depend on the block length, so the model always
    # runs block_size slots (training and inference alike) and a round may use any k <= block_size of them.
    block_size: int = 8
    # Anchor stem width (0: none, DFlash's architecture). With a stem, every mask slot starts as its mask embedding
    # plus its own projection of an MLP of this width over [the verifier features of the row before the anchor,
    # each channel divided by feature_scale ; the anchor token's embedding]: the row the next tokens depend on most,
    # handed to every slot without attention having to find it first. DFlash's format has no stem.
    stem_size: int = 0
    input_embedding_scale: float = 1.0  # block embeddings = verifier embedding rows times this
    output_multiplier: float = 1.0  # logits = LM head(states) times this ...
    final_logit_softcapping: float | None = None  # ... then tanh(logits / c) * c when set

    # -- verifier record --
    # Hub id or folder name of the verifier the drafter was trained against (None: unknown), for messages; compared
    # only when no fingerprint is recorded (drafters saved before fingerprints).
    verifier_name: str | None = None
    # model_fingerprint of that verifier (None: unknown): it is recognised by what it is, wherever it sits.
    verifier_fingerprint: str | None = None
    # Width of each feature layer; the fusion projection reads len(feature_layers) * verifier_hidden_size.
    verifier_hidden_size: int = 256
    # Layer count of that verifier (None: unknown); feature layer ids index its hidden_states, so they must agree.
    verifier_num_hidden_layers: int | None = None
    # Which verifier hidden_states[i] are fused (0 = embedding output, L = last layer), in concatenation order.
    # None: three layers spread over verifier_num_hidden_layers (over 4, the tiny shape's depth, when unknown).
    feature_layers: list[int] | None = None

    def __post_init__(self, **kwargs) -> None:
        if self.feature_layers is None:
            self.feature_layers = spread_feature_layers(self.verifier_num_hidden_layers or 4)
        self.feature_layers = [int(i) for i in self.feature_layers]
        if self.head_dim is None:
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        super().__post_init__(**kwargs)
        self._check()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As transformers', except that a saved config without ``qk_norm`` predates it (no q/k norms)."""
        return super().from_dict({"qk_norm": False, **config_dict}, **kwargs)

    def _check(self) -> None:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"ConditionedDrafterConfig.{message}")

        require(
            1 <= self.num_hidden_layers <= MAX_DRAFT_LAYERS,
            f"num_hidden_layers must be in 1..{MAX_DRAFT_LAYERS}, got {self.num_hidden_layers}",
        )
        require(self.num_attention_heads >= 1, f"num_attention_heads must be >= 1, got {self.num_attention_heads}")
        require(
            self.head_dim >= 2 and self.head_dim % 2 == 0,
            f"head_dim must be even for RoPE, got {self.head_dim}",
        )
        require(
            self.num_key_value_heads >= 1 and self.num_attention_heads % self.num_key_value_heads == 0,
            f"num_key_value_heads ({self.num_key_value_heads}) must divide num_attention_heads "
            f"({self.num_attention_heads})",
        )
        require(
            self.hidden_size == self.verifier_hidden_size,
            f"hidden_size ({self.hidden_size}) must equal verifier_hidden_size ({self.verifier_hidden_size}): the "
            "drafter uses the verifier's embedding and LM head",
        )
        require(self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}")
        require(self.stem_size >= 0, f"stem_size must be >= 0 (0: no stem), got {self.stem_size}")
        require(
            self.max_position_embeddings > self.block_size,
            f"max_position_embeddings ({self.max_position_embeddings}) must exceed block_size ({self.block_size})",
        )
        require(self.vocab_size >= 1, f"vocab_size must be >= 1, got {self.vocab_size}")
        require(
            self.mask_token_id is None or 0 <= self.mask_token_id < self.vocab_size,
            f"mask_token_id must be in [0, {self.vocab_size}), got {self.mask_token_id}",
        )
        require(self.rms_norm_eps > 0, f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        rope_problem = unsupported_rope(self.rope_parameters)
        require(rope_problem is None, f"rope_parameters: {rope_problem}")
        if self.layer_types is not None:
            require(
                len(self.layer_types) == self.num_hidden_layers and set(self.layer_types) <= set(LAYER_TYPES),
                f"layer_types must name one of {LAYER_TYPES} per layer ({self.num_hidden_layers}), got "
                f"{self.layer_types}",
            )
            require(
                "sliding_attention" not in self.layer_types or (self.sliding_window or 0) >= 1,
                f"sliding_window must be >= 1 when a layer is sliding_attention, got {self.sliding_window}",
            )
        require(
            self.input_embedding_scale > 0 and self.output_multiplier > 0,
            f"input_embedding_scale and output_multiplier must be > 0, got {self.input_embedding_scale} and "
            f"{self.output_multiplier}",
        )
        require(
            self.final_logit_softcapping is None or self.final_logit_softcapping > 0,
            f"final_logit_softcapping must be > 0 or None, got {self.final_logit_softcapping}",
        )
        layers = self.feature_layers
        require(len(layers) >= 1, "feature_layers must name at least one verifier layer")
        require(len(set(layers)) == len(layers), f"feature_layers must not repeat a layer, got {layers}")
        top = self.verifier_num_hidden_layers
        require(
            all(0 <= i <= (top if top is not None else i) for i in layers),
            f"feature_layers must lie in 0..{top if top is not None else 'L'} (0 = embedding output), got {layers}",
        )

    def layer_attention(self, layer_idx: int) -> tuple[bool, int | None]:
        """(causal, window) of draft layer ``layer_idx``: full layers are bidirectional and unbounded, sliding
        layers causal with ``sliding_window``; ``attention_causal`` overrides causality when set."""
        kind = self.layer_types[layer_idx] if self.layer_types else "full_attention"
        sliding = kind == "sliding_attention"
        causal = sliding if self.attention_causal is None else bool(self.attention_causal)
        return causal, self.sliding_window if sliding else None

    @property
    def feature_size(self) -> int:
        """Width of one row of ``DraftRequest.features``: the chosen layers concatenated."""
        return len(self.feature_layers) * self.verifier_hidden_size

    @classmethod
    def for_verifier(
        cls,
        verifier_config: PreTrainedConfig,
        *,
        mask_token_id: int,
        num_hidden_layers: int = 1,
        block_size: int = 8,
        feature_layers: Sequence[int] | None = None,
        verifier_name: str | None = None,
        **overrides,
    ) -> ConditionedDrafterConfig:
        """A config shaped like ``verifier_config`` (width, heads, FFN, RoPE, context, vocab) with its record filled.

        ``feature_layers`` defaults to three layers spread low/mid/high; ``verifier_name`` to the config's
        ``name_or_path`` (empty: unknown)."""
        text = verifier_config.get_text_config()
        values = {
            "hidden_size": text.hidden_size,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            "intermediate_size": text.intermediate_size,
            "rms_norm_eps": getattr(text, "rms_norm_eps", 1e-6),
            "rope_parameters": verifier_rope_parameters(text),
            "max_position_embeddings": text.max_position_embeddings,
            "vocab_size": text.vocab_size,
            "verifier_name": verifier_name or (verifier_config.name_or_path or None),
            "verifier_hidden_size": text.hidden_size,
            "verifier_num_hidden_layers": text.num_hidden_layers,
            "feature_layers": list(feature_layers or spread_feature_layers(text.num_hidden_layers)),
        }
        values.update(overrides)
        return cls(mask_token_id=mask_token_id, num_hidden_layers=num_hidden_layers, block_size=block_size, **values)


# ---------------------------------------------------------------------------------------------------------------
# Verifier compatibility
# ---------------------------------------------------------------------------------------------------------------


FINGERPRINT_ROWS = 64  # embedding and LM-head rows hashed: enough to tell two checkpoints apart, cheap at any size


@torch.no_grad()
def model_fingerprint(model: PreTrainedModel) -> str:
    """What a model is, as a short hash, wherever it was loaded from: its text config's type and sizes, and
    ``FINGERPRINT_ROWS`` rows spread over its embedding and LM head, rounded to bfloat16 so that float32 and bfloat16
    loads of one checkpoint agree. Cheap: a few rows, not the weights."""
    text = model.config.get_text_config()
    digest = hashlib.sha256(f"{text.model_type}:{text.hidden_size}:{text.num_hidden_layers}".encode())
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is None:
            continue
        weight = module.weight
        rows = torch.linspace(0, weight.shape[0] - 1, min(FINGERPRINT_ROWS, weight.shape[0])).round().long()
        sample = weight[rows.to(weight.device)].to("cpu", torch.bfloat16)
        digest.update(str(tuple(weight.shape)).encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def _model_name(name: str | None) -> str | None:
    """Comparable model name: the last path part, lower-cased; a Hub cache folder maps back to its repo name."""
    if not name:
        return None
    cached = re.search(r"models--[^/\\]+--([^/\\]+)", name)
    if cached:
        return cached.group(1).lower()
    return re.split(r"[/\\]", name.rstrip("/\\"))[-1].lower() or None


def _model_names(name: str | None) -> set[str]:
    """The comparable names of a Hub id or path; an existing path adds its resolved target's (a symlink's)."""
    names = {_model_name(name)}
    if name and os.path.exists(name):
        names.add(_model_name(os.path.realpath(name)))
    return names - {None}


def _identity_problem(config: ConditionedDrafterConfig, verifier: PreTrainedModel) -> str | None:
    """Why ``verifier`` is not the recorded one, or None. With a recorded fingerprint, the weights decide and any
    name or path passes; a drafter saved before fingerprints compares names, symlinks resolved."""
    given_name = verifier.config.name_or_path
    if config.verifier_fingerprint is not None:
        given = model_fingerprint(verifier)
        if given == config.verifier_fingerprint:
            return None
        return (
            f"{given_name or 'an unnamed model'} is a different model from the recorded {config.verifier_name!r} "
            f"(weights fingerprint {given} != recorded {config.verifier_fingerprint})"
        )
    recorded, given = _model_names(config.verifier_name), _model_names(given_name)
    if recorded and given and not recorded & given:
        return (
            f"name {given_name!r} != recorded {config.verifier_name!r} (this drafter records no weights fingerprint; "
            "a renamed copy of the same model may pass check_name=False)"
        )
    return None


def check_verifier_compatible(
    config: ConditionedDrafterConfig, verifier: PreTrainedModel, check_name: bool = True
) -> None:
    """Refuse a verifier the drafter was not built for; the message names the mismatch and the recorded value.

    Checked: hidden size, layer count (recorded count, and every feature layer id in range), vocabulary (rows of
    the embedding and of the LM head) and, when those fit and ``check_name``, identity: the recorded weights
    fingerprint, else (older drafters) the recorded model name."""
    text = verifier.config.get_text_config()
    problems = []
    if text.hidden_size != config.verifier_hidden_size:
        problems.append(f"hidden size {text.hidden_size} != recorded {config.verifier_hidden_size}")
    layers = text.num_hidden_layers
    if config.verifier_num_hidden_layers is not None and layers != config.verifier_num_hidden_layers:
        problems.append(f"{layers} layers != recorded {config.verifier_num_hidden_layers}")
    outside = [i for i in config.feature_layers if not 0 <= i <= layers]
    if outside:
        problems.append(f"feature layers {outside} outside its hidden_states 0..{layers}")
    embed, head = verifier.get_input_embeddings(), verifier.get_output_embeddings()
    if embed is None or head is None:
        problems.append("it has no input embedding or no LM head to lend")
    elif embed.weight.shape[0] != config.vocab_size or head.weight.shape[0] != config.vocab_size:
        problems.append(
            f"vocabulary {embed.weight.shape[0]} (embedding) / {head.weight.shape[0]} (LM head) rows != recorded "
            f"{config.vocab_size}"
        )
    elif config.mask_token_id is not None and not bool(embed.weight[config.mask_token_id].any()):
        # a zero input vector gives zero queries: every mask slot of the first layer would read the same average
        problems.append(f"its embedding row of mask_token_id {config.mask_token_id} is all zeros; choose another id")
    identity = _identity_problem(config, verifier) if check_name and not problems else None
    if identity is not None:
        problems.append(identity)
    if problems:
        raise ValueError(
            f"this conditioned drafter was built for another verifier ({config.verifier_name or 'unnamed'}, hidden "
            f"{config.verifier_hidden_size}, feature layers {config.feature_layers}): " + "; ".join(problems)
        )


@torch.no_grad()
def verifier_features(
    verifier: PreTrainedModel,
    input_ids: torch.Tensor,
    feature_layers: Sequence[int],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, T, len(feature_layers) * hidden]``: ``hidden_states[i]`` for i in ``feature_layers`` concatenated, the
    rule the decoding Verifier uses for ``DraftRequest.features`` (so training reads what inference gets)."""
    return verifier_features_and_logits(verifier, input_ids, feature_layers, attention_mask, all_logits=False)[0]


@torch.no_grad()
def verifier_features_and_logits(
    verifier: PreTrainedModel,
    input_ids: torch.Tensor,
    feature_layers: Sequence[int],
    attention_mask: torch.Tensor | None = None,
    all_logits: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The features of :func:`verifier_features` and the logits ``[B, T, V]`` (``all_logits``; else the last
    position's) from the same pass: distillation to the verifier costs no second forward."""
    out = verifier(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        logits_to_keep=0 if all_logits else 1,
    )
    return torch.cat([out.hidden_states[i] for i in feature_layers], dim=-1), out.logits


# ---------------------------------------------------------------------------------------------------------------
# Small functions: norm, RoPE, attention
# ---------------------------------------------------------------------------------------------------------------


class ConditionedRMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back (as Qwen2RMSNorm)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def position_mask(
    query_positions: torch.Tensor, key_positions: torch.Tensor, causal: bool, window: int | None
) -> torch.Tensor | None:
    """Boolean ``[B, 1, Q, K]`` of the keys a causal and/or windowed layer sees, by absolute position (None: all).

    Causal: key position <= query position. Window w: the key is less than w positions before the query, and,
    for a bidirectional layer, less than w after it."""
    if not causal and window is None:
        return None
    distance = query_positions[:, :, None] - key_positions[:, None, :]  # [B, Q, K]
    visible = distance >= 0 if causal else torch.ones_like(distance, dtype=torch.bool)
    if window is not None:
        visible &= distance < window
        if not causal:
            visible &= -distance < window
    return visible[:, None]


def _and_masks(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
    if first is None or second is None:
        return second if first is None else first
    return first & second


def rope_frequencies(config: PreTrainedConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[head_dim // 2]`` (float32, CPU) and the cos/sin scale of ``config.rope_parameters``.

    transformers computes them (its RoPE init functions; Qwen3's rotary embedding for "default", as the DFlash
    reference does), so a scaled RoPE gives the verifier's and the reference's numbers, not a re-derivation."""
    problem = unsupported_rope(config.rope_parameters)
    if problem is not None:
        raise ValueError(f"rope_parameters: {problem}")
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type == "default":
        inv_freq, scaling = Qwen3RotaryEmbedding.compute_default_rope_parameters(config)
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config)
    return inv_freq.float(), float(scaling)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype, scaling: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin ``[..., S, head_dim]`` for integer ``positions`` ``[..., S]`` and ``inv_freq`` ``[head_dim // 2]``
    (:func:`rope_frequencies`), times ``scaling`` (YaRN's attention factor); computed in float32."""
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if scaling != 1.0:
        cos, sin = cos * scaling, sin * scaling
    return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, heads, S, D]`` by cos/sin ``[B or 1, S, D]``."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, kv_heads, S, D]`` -> ``[B, kv_heads * n_rep, S, D]`` (each kv head serves n_rep query heads)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention. ``attention_mask`` is boolean ``[B, 1, Q, K]``, True = may attend (None: all).

    Returns ``[B, Q, heads, D]`` and the weights, like transformers' attention functions."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    # at least float32 for the softmax (bf16 is too coarse), never less than the input's precision
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------


class ConditionedAttention(nn.Module):
    """Block attention over ``[memory keys/values ; block keys/values]``; memory keys come from the same
    ``k_proj`` / ``v_proj`` applied to the fused context (K/V injection). The memory object is passed in and
    asked for this layer's keys/values (the layer owns no cache)."""

    def __init__(self, config: ConditionedDrafterConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # the mask (or its absence) says what is visible, never the kernel
        heads, kv_heads, bias = config.num_attention_heads, config.num_key_value_heads, config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * self.head_dim, config.hidden_size, bias=bias)
        if config.qk_norm:
            self.q_norm = ConditionedRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = ConditionedRMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, heads * D]`` -> ``[B, heads, S, D]``."""
        return x.view(*x.shape[:2], -1, self.head_dim).transpose(1, 2)

    def key_values(
        self, states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normed, rotated keys and values ``[B, kv_heads, S, D]`` of ``states`` ``[B, S, H]`` (memory or block)."""
        keys = apply_rope(self.k_norm(self._heads(self.k_proj(states))), cos, sin)
        return keys, self._heads(self.v_proj(states))

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        memory: ContextMemory | SequenceMemory,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``hidden_states`` ``[B, Q, H]`` (the blocks) and mask ``[B, 1, Q, M + Q]`` (None: all visible)
        -> ``[B, Q, H]``."""
        query = apply_rope(self.q_norm(self._heads(self.q_proj(hidden_states))), cos, sin)
        block_keys, block_values = self.key_values(hidden_states, cos, sin)
        keys, values = memory.with_block(self.layer_idx, block_keys, block_values)  # [B, kv_heads, M + Q, D]
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, _ = attention(
            self, query, keys, values, attention_mask, scaling=self.scaling, dropout=0.0, is_causal=False
        )
        return self.o_proj(out.reshape(*hidden_states.shape[:2], -1))


class ConditionedMLP(nn.Module):
    """Gated feed-forward (SwiGLU with the default activation)."""

    def __init__(self, config: ConditionedDrafterConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ConditionedDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block layer: attention over memory + block, then SwiGLU."""

    def __init__(self, config: ConditionedDrafterConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = ConditionedRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = ConditionedAttention(config, layer_idx)
        self.post_attention_layernorm = ConditionedRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = ConditionedMLP(config)

    #: methods besides forward that read this layer's weights: FSDP2 gathers them around these too (training.sharding)
    fsdp_forward_methods = ("memory_key_values",)

    def memory_key_values(
        self, context: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys and values of the fused memory rows ``context`` ``[B, M, H]``."""
        return self.self_attn.key_values(context, cos, sin)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        memory: ContextMemory | SequenceMemory,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attended = self.self_attn(self.input_layernorm(hidden_states), cos, sin, memory, attention_mask)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


# ---------------------------------------------------------------------------------------------------------------
# Context memory (the drafter's own cache)
# ---------------------------------------------------------------------------------------------------------------


def channel_rms(features: torch.Tensor) -> torch.Tensor:
    """Each channel's RMS over ``features`` ``[..., F]``, floored at 1e-3: the divisor that puts a verifier's massive
    activations on the scale of its other channels."""
    return features.reshape(-1, features.shape[-1]).float().pow(2).mean(0).sqrt().clamp(min=1e-3)


class AnchorStem(nn.Module):
    """The anchor stem (``config.stem_size``): per mask slot, an additive start state from the features of the row
    before the anchor and the anchor token's embedding. ``feature_scale`` (a buffer, saved) divides each feature
    channel: set it to the channels' RMS over training features (``set_feature_scale``), so that a verifier's
    massive activations (a few channels holding most of a layer's energy) do not drown the others."""

    def __init__(self, config: ConditionedDrafterConfig) -> None:
        super().__init__()
        self.block_size, self.hidden_size = config.block_size, config.hidden_size
        self.register_buffer("feature_scale", torch.ones(config.feature_size))
        self.up = nn.Linear(config.feature_size + config.hidden_size, config.stem_size)
        self.act_fn = ACT2FN[config.hidden_act]
        self.down = nn.Linear(config.stem_size, config.block_size * config.hidden_size)

    @torch.no_grad()
    def set_feature_scale(self, features: torch.Tensor) -> None:
        """Each channel's RMS over ``features`` ``[..., F]`` (``channel_rms``) becomes its divisor."""
        self.feature_scale.copy_(channel_rms(features))

    def forward(self, previous: torch.Tensor, anchor_embeddings: torch.Tensor) -> torch.Tensor:
        """``previous`` ``[..., F]`` (zeros for an anchor at position 0) and ``anchor_embeddings`` ``[..., H]`` ->
        start states ``[..., block_size, H]`` of the mask slots."""
        scaled = previous.to(anchor_embeddings.dtype) / self.feature_scale.to(anchor_embeddings.dtype)
        hidden = self.act_fn(self.up(torch.cat([scaled, anchor_embeddings], dim=-1)))
        return self.down(hidden).unflatten(-1, (self.block_size, self.hidden_size))


class ContextMemory:
    """The drafter's cache at inference: per-layer memory keys/values for positions ``0..length-1``.

    Each layer has one buffer ``[B, kv_heads, capacity, D]``. Rows ``0..length-1`` hold the memory; the rows
    right after them are scratch where the current block's keys/values are written, so attention reads one
    contiguous prefix of the buffer and nothing is concatenated per round (gpt-fast's static cache, grown by
    doubling). Memory rows are only appended (new committed positions) or cropped (back to a prefix shared with
    new ids, which costs nothing): a position's keys/values never change, because its verifier features do not.
    """

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    def _reserve(self, rows: int, like: torch.Tensor) -> None:
        """Make room for ``rows`` positions (at least doubling), keeping the first ``length`` rows; new buffers
        take batch, heads, head dim, dtype and device from ``like`` ``[B, kv_heads, *, D]``."""
        if rows <= self.capacity:
            return
        shape = (like.shape[0], like.shape[1], max(rows, 2 * self.capacity, 256), like.shape[3])
        old_keys, old_values = self.keys, self.values
        self.keys = [like.new_empty(shape) for _ in range(self.num_layers)]
        self.values = [like.new_empty(shape) for _ in range(self.num_layers)]
        if old_keys:
            for old, new in zip(old_keys + old_values, self.keys + self.values, strict=True):
                new[:, :, : self.length] = old[:, :, : self.length]

    def crop(self, length: int) -> None:
        """Keep positions ``0..length-1`` (the rows after them become scratch)."""
        self.length = min(self.length, length)

    def append(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Store per-layer keys/values ``[B, kv_heads, r, D]`` of the next r positions."""
        rows = keys[0].shape[2]
        self._reserve(self.length + rows, keys[0])
        for buffer, new in zip(self.keys + self.values, keys + values, strict=True):
            buffer[:, :, self.length : self.length + rows] = new
        self.length += rows

    def with_block(
        self, layer_idx: int, block_keys: torch.Tensor, block_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the block's keys/values into the scratch rows; return memory + block ``[B, kv_heads, M + Q, D]``."""
        end = self.length + block_keys.shape[2]
        self._reserve(end, block_keys)
        self.keys[layer_idx][:, :, self.length : end] = block_keys
        self.values[layer_idx][:, :, self.length : end] = block_values
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]


class SequenceMemory:
    """Memory keys/values of a whole training sequence (``[B, kv_heads, T, D]`` per layer), uncached: the
    training forward computes them once and every block reads them through its mask."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys, self.values = keys, values

    def with_block(
        self, layer_idx: int, block_keys: torch.Tensor, block_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.cat([self.keys[layer_idx], block_keys], dim=2)
        return keys, torch.cat([self.values[layer_idx], block_values], dim=2)


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ConditionedDrafterOutput(ModelOutput):
    logits: torch.Tensor | None = None  # [B, A, block_size, V]: slot i of anchor a predicts the token at a + 1 + i
    hidden_states: torch.Tensor | None = None  # [B, A, block_size, H]: final-normed slot states (input of the head)


@dataclass
class _VerifierParts:
    """The verifier's embedding and LM head, held outside nn.Module registration: not saved, never trained."""

    embed: nn.Module
    head: nn.Linear


def block_targets(
    input_ids: torch.Tensor, anchor_positions: torch.Tensor, block_size: int, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels for :meth:`ConditionedDrafterModel.forward`: ``input_ids[b, a + 1 + i]`` ``[B, A, block_size]``
    and a boolean ``[B, A, block_size]`` marking the slots that have one (inside the sequence and ``valid``)."""
    positions = anchor_positions[..., None] + 1 + torch.arange(block_size, device=input_ids.device)  # [B, A, k]
    inside = positions < input_ids.shape[1]
    clamped = positions.clamp(max=input_ids.shape[1] - 1)
    labels = torch.gather(input_ids, 1, clamped.flatten(1)).view_as(positions)
    if valid is not None:
        inside &= torch.gather(valid.bool(), 1, clamped.flatten(1)).view_as(positions)
    return labels, inside


class ConditionedDrafterModel(PreTrainedModel):
    """The drafter (see the module docstring). Inference: :meth:`extend_memory` + :meth:`draft`; training:
    :meth:`forward`. Both need the verifier's embedding and LM head, attached via ``verifier=`` or
    :meth:`attach_verifier` (a loaded drafter gets them re-attached from its verifier)."""

    config_class = ConditionedDrafterConfig
    config: ConditionedDrafterConfig
    base_model_prefix = "conditioned_drafter"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ConditionedDecoderLayer"]
    _supports_sdpa = True  # eager and sdpa take an arbitrary boolean mask; flash attention does not

    def __init__(self, config: ConditionedDrafterConfig, verifier: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        if config.mask_token_id is None:
            raise ValueError("ConditionedDrafterConfig.mask_token_id must be set to build a model")
        self.fc = nn.Linear(config.feature_size, config.hidden_size, bias=False)
        self.hidden_norm = ConditionedRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.layers = nn.ModuleList([ConditionedDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = ConditionedRMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.stem_size:
            self.stem = AnchorStem(config)
        self.gradient_checkpointing = False
        self._verifier_parts: _VerifierParts | None = None
        self._rope_frequencies: dict[torch.device, tuple[torch.Tensor, float]] = {}
        self.post_init()
        if verifier is not None:
            self.attach_verifier(verifier)

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> ConditionedDrafterModel:
        """As transformers', reading drafters saved under the old fusion-norm name too."""
        kwargs.setdefault("key_mapping", LEGACY_KEYS)
        return super().from_pretrained(*args, **kwargs)

    # -- the borrowed verifier parts ------------------------------------------------------------------------------

    def attach_verifier(self, verifier: PreTrainedModel, check_name: bool = True) -> None:
        """Borrow ``verifier``'s input embedding and LM head after checking it is the verifier of the record."""
        check_verifier_compatible(self.config, verifier, check_name=check_name)
        self._verifier_parts = _VerifierParts(verifier.get_input_embeddings(), verifier.get_output_embeddings())

    @property
    def has_verifier(self) -> bool:
        return self._verifier_parts is not None

    @property
    def verifier_head(self) -> nn.Linear:
        """The borrowed LM head (a draft vocabulary takes its rows from it)."""
        return self._parts().head

    def _parts(self) -> _VerifierParts:
        if self._verifier_parts is None:
            raise RuntimeError(
                "the drafter has no verifier embedding / LM head: call attach_verifier(verifier) (they are not part "
                "of the saved drafter)"
            )
        return self._verifier_parts

    def get_input_embeddings(self) -> nn.Module | None:
        return self._verifier_parts.embed if self._verifier_parts is not None else None

    def get_output_embeddings(self) -> nn.Module | None:
        return None  # the head is the verifier's; nothing here to tie or resize

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Rows of the verifier's embedding matrix for ``input_ids`` times ``input_embedding_scale``, without
        gradient and in the drafter's dtype (the matrix, not the module: a module's own scaling is not applied)."""
        weight = self._parts().embed.weight
        with torch.no_grad():
            rows = F.embedding(input_ids.to(weight.device), weight).to(device=self.device, dtype=self.dtype)
        scale = self.config.input_embedding_scale
        return rows if scale == 1.0 else rows * scale

    def lm_logits(
        self, hidden_states: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """The verifier's LM head on final-normed states (its weights detached: frozen, not trained), times
        ``output_multiplier``, then soft-capped when ``final_logit_softcapping`` is set. ``rows`` (weight, bias)
        replaces the head by some of its rows (a draft vocabulary's)."""
        if rows is None:
            head = self._parts().head
            rows = head.weight.detach(), head.bias.detach() if head.bias is not None else None
        weight, bias = rows
        hidden_states = hidden_states.to(device=weight.device, dtype=weight.dtype)
        logits = F.linear(hidden_states, weight, bias)
        if self.config.output_multiplier != 1.0:
            logits = logits * self.config.output_multiplier
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    # -- shared steps ---------------------------------------------------------------------------------------------

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of ``positions``; the frequencies are computed once per device and kept outside the module's
        buffers, so a meta-device load leaves nothing to re-initialise."""
        device = positions.device
        if device not in self._rope_frequencies:
            inv_freq, scaling = rope_frequencies(self.config)
            self._rope_frequencies[device] = inv_freq.to(device), scaling
        inv_freq, scaling = self._rope_frequencies[device]
        return rope_cos_sin(positions, inv_freq, self.dtype, scaling)

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """Step 1: verifier features ``[B, M, F]`` -> context memory ``[B, M, H]``."""
        if features.shape[-1] != self.config.feature_size:
            raise ValueError(
                f"features have {features.shape[-1]} columns, expected {self.config.feature_size} = "
                f"{len(self.config.feature_layers)} layers x {self.config.verifier_hidden_size}"
            )
        return self.hidden_norm(self.fc(features.to(device=self.device, dtype=self.dtype)))

    def memory_key_values(
        self, features: torch.Tensor, start: int = 0
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Step 2: per-layer memory keys/values ``[B, kv_heads, M, D]`` of ``features`` ``[B, M, F]`` at
        positions ``start..start+M-1``."""
        context = self.fuse(features)
        positions = torch.arange(start, start + features.shape[1], device=self.device)[None]
        cos, sin = self._rope(positions)
        pairs = [layer.memory_key_values(context, cos, sin) for layer in self.layers]
        return [k for k, _ in pairs], [v for _, v in pairs]

    def _run_blocks(
        self,
        block_ids: torch.Tensor,
        positions: torch.Tensor,
        memory: ContextMemory | SequenceMemory,
        attention_mask: torch.Tensor | None,
        key_positions: torch.Tensor,
        previous: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Steps 3-4 up to the final norm: block ids/positions ``[B, Q]`` -> states ``[B, Q, H]``.

        ``attention_mask`` ``[B, 1, Q, K]`` (None: all visible) is what every layer may see; causal or sliding
        layers narrow it by the absolute positions of queries and keys (``key_positions`` ``[B or 1, K]``).
        ``previous`` ``[B, Q // (1 + block_size), F]``: each block's features of the row before its anchor, which a
        drafter with a stem adds to its mask slots (``AnchorStem``)."""
        hidden = self.embed(block_ids)
        if self.config.stem_size:
            width = 1 + self.config.block_size
            blocks = hidden.view(hidden.shape[0], -1, width, hidden.shape[-1])
            start = self.stem(previous.to(device=self.device, dtype=self.dtype), blocks[:, :, 0])
            hidden = torch.cat([blocks[:, :, :1], blocks[:, :, 1:] + start], dim=2).view_as(hidden)
        cos, sin = self._rope(positions)
        masks: dict[tuple[bool, int | None], torch.Tensor | None] = {}
        for i, layer in enumerate(self.layers):
            rule = self.config.layer_attention(i)
            if rule not in masks:
                masks[rule] = _and_masks(attention_mask, position_mask(positions, key_positions, *rule))
            hidden = layer(hidden, cos, sin, memory, masks[rule])
        return self.norm(hidden)

    def block_ids(self, first_tokens: torch.Tensor) -> torch.Tensor:
        """``[B]`` anchor tokens -> ``[B, 1 + block_size]`` blocks: the token, then mask slots."""
        masks = torch.full(
            (first_tokens.shape[0], self.config.block_size), self.config.mask_token_id, device=first_tokens.device
        )
        return torch.cat([first_tokens[:, None], masks], dim=1)

    # -- inference ------------------------------------------------------------------------------------------------

    def new_memory(self) -> ContextMemory:
        return ContextMemory(self.config.num_hidden_layers)

    @torch.inference_mode()  # the memory's buffers are written in place: keep them all inference tensors
    def extend_memory(self, memory: ContextMemory, features: torch.Tensor) -> None:
        """Append the keys/values of ``features`` ``[B, r, F]`` (positions ``memory.length..+r-1``) to ``memory``."""
        keys, values = self.memory_key_values(features, start=memory.length)
        memory.append(keys, values)

    @torch.inference_mode()
    def draft(
        self,
        memory: ContextMemory,
        first_tokens: torch.Tensor,
        head_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        previous: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, block_size, V]`` of the block anchored at ``memory.length`` (the memory covers every
        position before the anchor); ``first_tokens`` ``[B]`` are the anchor tokens. With ``head_rows`` (see
        ``lm_logits``) the last dimension is those rows'. A drafter with a stem needs ``previous`` ``[B, F]``, the
        features of the memory's last row (None: zeros, right for an empty memory only)."""
        if self.config.stem_size and previous is None:
            if memory.length:
                raise ValueError("a drafter with an anchor stem needs the features of the row before the anchor")
            previous = torch.zeros(first_tokens.shape[0], self.config.feature_size)
        start = memory.length
        if start + self.config.block_size >= self.config.max_position_embeddings:
            raise ValueError(
                f"block at positions {start}..{start + self.config.block_size} exceeds the drafter's context "
                f"({self.config.max_position_embeddings} positions)"
            )
        blocks = self.block_ids(first_tokens.to(self.device))
        positions = torch.arange(start, start + blocks.shape[1], device=self.device)[None]
        key_positions = torch.arange(start + blocks.shape[1], device=self.device)[None]  # memory rows, then the block
        previous = None if previous is None else previous[:, None]
        hidden = self._run_blocks(blocks, positions, memory, None, key_positions, previous)
        return self.lm_logits(hidden[:, 1:], head_rows)

    # -- training -------------------------------------------------------------------------------------------------

    @staticmethod
    def training_mask(anchor_positions: torch.Tensor, memory_length: int, block_length: int) -> torch.Tensor:
        """Boolean ``[B, 1, Q, M + Q]`` with ``Q = A * block_length``: the block of anchor ``a`` sees memory
        positions ``< a`` and every position of its own block (the inference rule, with the memory = ids[:a])."""
        batch, anchors = anchor_positions.shape
        device = anchor_positions.device
        query_anchor = anchor_positions.repeat_interleave(block_length, dim=1)  # [B, Q]
        sees_memory = torch.arange(memory_length, device=device)[None, None, :] < query_anchor[:, :, None]
        block_of = torch.arange(anchors, device=device).repeat_interleave(block_length)  # [Q]
        sees_block = (block_of[:, None] == block_of[None, :]).expand(batch, -1, -1)
        return torch.cat([sees_memory, sees_block], dim=2)[:, None]

    def forward(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        anchor_positions: torch.Tensor,
        compute_logits: bool = True,
    ) -> ConditionedDrafterOutput:
        """Training forward: draft a block after every anchor in one pass.

        Args:
            features: ``[B, T, F]`` verifier features of the whole sequence (row j = position j, the layers of
                ``config.feature_layers`` concatenated in that order, as the verifier builds them).
            input_ids: ``[B, T]`` the sequence.
            anchor_positions: ``[B, A]`` positions ``a`` in ``0..T-1``; the block of ``a`` holds ``input_ids[a]``
                plus ``block_size`` masks at ``a+1..a+block_size`` and sees memory rows ``0..a-1``.
            compute_logits: False returns only the final states, for a chunked loss over a large vocabulary.

        Returns logits ``[B, A, block_size, V]`` (labels: :func:`block_targets`) and states ``[B, A, block_size, H]``.
        """
        batch, length = input_ids.shape
        anchors = anchor_positions.to(self.device)
        if int(anchors.min()) < 0 or int(anchors.max()) >= length:
            raise ValueError(f"anchor_positions must lie in 0..{length - 1}")
        if int(anchors.max()) + self.config.block_size >= self.config.max_position_embeddings:
            raise ValueError(
                f"an anchor's block passes max_position_embeddings ({self.config.max_position_embeddings})"
            )
        if features.shape[:2] != (batch, length):
            raise ValueError(f"features {tuple(features.shape)} must be [B, T, F] for input_ids {(batch, length)}")
        width = 1 + self.config.block_size
        memory = SequenceMemory(*self.memory_key_values(features))
        first = torch.gather(input_ids.to(self.device), 1, anchors)  # [B, A]
        blocks = self.block_ids(first.flatten()).view(batch, -1)  # [B, A * width]
        positions = (anchors[..., None] + torch.arange(width, device=self.device)).view(batch, -1)
        mask = self.training_mask(anchors, length, width)
        key_positions = torch.cat([torch.arange(length, device=self.device).expand(batch, -1), positions], dim=1)
        previous = None
        if self.config.stem_size:  # the features of row a - 1 (zeros for an anchor at 0)
            index = (anchors - 1).clamp(min=0).to(features.device)[..., None].expand(-1, -1, features.shape[-1])
            previous = torch.where(anchors[..., None] > 0, torch.gather(features, 1, index).to(self.device), 0)
        hidden = self._run_blocks(blocks, positions, memory, mask, key_positions, previous)
        hidden = hidden.view(batch, anchors.shape[1], width, -1)[:, :, 1:]
        logits = self.lm_logits(hidden) if compute_logits else None
        return ConditionedDrafterOutput(logits=logits, hidden_states=hidden)


AutoConfig.register(ConditionedDrafterConfig.model_type, ConditionedDrafterConfig, exist_ok=True)
AutoModel.register(ConditionedDrafterConfig, ConditionedDrafterModel, exist_ok=True)
