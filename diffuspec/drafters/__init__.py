"""Drafters behind the ``Drafter`` interface, and ``load_drafter``: the right one for a saved folder."""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedModel

from ..decoding.drafter import Drafter
from ..loading import is_conditioned_drafter, resolve_local
from .conditioned import ConditionedDrafter
from .diffusion import DiffusionDrafter
from .vocabulary import DraftVocabulary


def load_drafter(
    name_or_path: str | os.PathLike,
    verifier_model: PreTrainedModel,
    *,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    quantization: str | None = None,
    vocabulary: DraftVocabulary | None = None,
) -> Drafter:
    """A feature-conditioned drafter (which borrows ``verifier_model``'s embedding and head) or a diffusion
    drafter (Dream, LLaDA or diffuspec-native), by the folder's ``config.json``; ``dtype=None`` keeps the stored one.
    ``vocabulary``: the draft vocabulary its head scores (None: every id)."""
    folder = resolve_local(name_or_path)
    if is_conditioned_drafter(folder):
        if quantization is not None:
            raise ValueError(f"quantization={quantization!r} applies to diffusion drafters, not to {folder}")
        return ConditionedDrafter.from_pretrained(
            folder, verifier_model, dtype=dtype, device_map=device_map, vocabulary=vocabulary
        )
    return DiffusionDrafter.from_pretrained(
        folder, dtype=dtype, device_map=device_map, quantization=quantization, vocabulary=vocabulary
    )
