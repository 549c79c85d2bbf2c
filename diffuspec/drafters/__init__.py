"""Drafters behind the ``Drafter`` interface; ``load_drafter``: the right one for a saved folder,
``recommended_decode_config``: how that folder says to decode with it, and ``load_pretrained``: a verifier, its
drafter and their decoding from names (``SpeculativeDecoder.from_pretrained``'s ``"diffuspec"`` loader)."""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedModel

from ..decoding.config import DecodeConfig
from ..decoding.drafter import Drafter
from ..decoding.loop import PRETRAINED_LOADERS
from ..drafter_config import has_diffuspec_config, read_diffuspec_config
from ..loading import bitsandbytes_config, drafter_kind, load_causal_lm, resolve_local
from .autoregressive import AutoregressiveDrafter
from .conditioned import ConditionedDrafter
from .diffusion import DiffusionDrafter
from .hybrid import HybridDrafter
from .prompt_lookup import PromptLookupDrafter
from .vocabulary import DraftVocabulary

__all__ = [
    "AutoregressiveDrafter",
    "ConditionedDrafter",
    "DiffusionDrafter",
    "DraftVocabulary",
    "HybridDrafter",
    "PromptLookupDrafter",
    "load_drafter",
    "load_pretrained",
]


def load_drafter(
    name_or_path: str | os.PathLike,
    verifier_model: PreTrainedModel,
    *,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    quantization: str | None = None,
    vocabulary: DraftVocabulary | None = None,
) -> Drafter:
    """The drafter a folder holds, by its config files (``diffuspec.loading.drafter_kind``): a feature-conditioned
    drafter (which borrows ``verifier_model``'s embedding and head), a diffusion drafter (Dream, LLaDA or
    diffuspec-native) or a plain causal LM drafting autoregressively; ``dtype=None`` keeps the stored dtype.
    ``quantization`` applies to diffusion drafters; ``vocabulary`` (the draft vocabulary its head scores; None:
    every id) to diffusion and conditioned ones."""
    folder = resolve_local(name_or_path)
    kind = drafter_kind(folder)
    if kind != "diffusion" and quantization is not None:
        raise ValueError(f"quantization={quantization!r} applies to diffusion drafters, not to the {kind} {folder}")
    if kind == "conditioned":
        return ConditionedDrafter.from_pretrained(
            folder, verifier_model, dtype=dtype, device_map=device_map, vocabulary=vocabulary
        )
    if kind == "autoregressive":
        if vocabulary is not None:
            raise ValueError(f"a draft vocabulary applies to diffusion and conditioned drafters, not to {folder}")
        return AutoregressiveDrafter.from_pretrained(folder, dtype=dtype, device_map=device_map)
    return DiffusionDrafter.from_pretrained(
        folder, dtype=dtype, device_map=device_map, quantization=quantization, vocabulary=vocabulary
    )


def recommended_decode_config(name_or_path: str | os.PathLike, drafter: Drafter) -> DecodeConfig:
    """How to decode with the drafter a folder holds: the decoding its trainer recorded (``diffuspec_config.json``'s
    ``recommended_decode``), else the defaults with ADL within the drafter's block (``DecodeConfig.for_block``)."""
    folder = resolve_local(name_or_path)
    block = drafter.max_draft_length()
    if has_diffuspec_config(folder):
        return read_diffuspec_config(folder).decode_config(block=block)
    return DecodeConfig.for_block(block)


def load_pretrained(
    verifier: str | os.PathLike,
    drafter: str | os.PathLike | None = None,
    config: DecodeConfig | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    drafter_device_map: str | dict | None = None,
    drafter_quantization: str | None = None,
    draft_vocab: str | os.PathLike | None = None,
) -> tuple[PreTrainedModel, Drafter | None, DecodeConfig | None]:
    """(verifier model, drafter, decoding) for ``SpeculativeDecoder``: a verifier (any causal LM folder or Hub id)
    and a drafter folder or Hub id of any kind (``load_drafter``); ``config=None`` becomes the folder's
    recommendation (``recommended_decode_config``); with no drafter it stays None (plain decoding).

    ``drafter_quantization="8bit"`` / ``"4bit"`` loads a diffusion drafter through bitsandbytes; it is checked
    before the verifier loads, so a missing package fails at once. ``draft_vocab`` is a ``DraftVocabulary`` file
    (read before any weights) whose ids alone the drafter's head scores."""
    bitsandbytes_config(drafter_quantization, dtype)
    if draft_vocab is not None and drafter is None:
        raise ValueError(f"draft_vocab={str(draft_vocab)!r} needs a drafter")
    vocabulary = None if draft_vocab is None else DraftVocabulary.load(draft_vocab)
    verifier_model = load_causal_lm(verifier, dtype=dtype, device_map=device_map)
    if drafter is None:
        return verifier_model, None, config
    folder = resolve_local(drafter)
    draft = load_drafter(
        folder,
        verifier_model,
        dtype=dtype,
        device_map=drafter_device_map or device_map,
        quantization=drafter_quantization,
        vocabulary=vocabulary,
    )
    return verifier_model, draft, config if config is not None else recommended_decode_config(folder, draft)


PRETRAINED_LOADERS["diffuspec"] = load_pretrained
