"""Where the verifier's distributions come from: two providers feeding one loss loop (as SpecForge splits
online and offline targets).

- ``OfflineTeacher``: the dataset carries ``teacher_topk_ids`` / ``teacher_topk_logprobs`` per completion token
  (written by ``diffuspec.datagen`` while the verifier generated the completions); the collator cuts them
  to each block's slots.
- ``OnlineTeacher``: the frozen verifier reads the clean prompt + completion rows under ``no_grad``, in float32,
  once per example, and each block slot takes the verifier's distribution for its token.

Both return ``TeacherTargets`` for the block slots: top-k ids and log-probs, or (online, ``top_k=0``) the full
vocabulary. Column t of the completion is always scored with ``p(. | prompt, completion[:t])``: with
verifier-generated completions that is exactly the distribution the verifier checks slot t against when every
earlier slot was accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from .losses import gather_slot_logits


@dataclass
class TeacherTargets:
    logprobs: torch.Tensor  # [Rb, k, K] top-k log-probs, or [Rb, k, V] full log-probs when ids is None
    ids: torch.Tensor | None  # [Rb, k, K] top-k ids, None: full vocabulary


class OfflineTeacher:
    """Reads the verifier's top-k from the batch (columns cut to block slots by ``DrafterCollator``)."""

    def __call__(self, inputs: dict[str, Any]) -> TeacherTargets:
        return TeacherTargets(logprobs=inputs["teacher_topk_logprobs"], ids=inputs["teacher_topk_ids"])


class OnlineTeacher:
    """Runs the frozen verifier on the clean rows; ``top_k=0`` keeps the full distribution (exact divergences)."""

    def __init__(self, verifier_model: PreTrainedModel, top_k: int = 0, mask_token_id: int | None = None) -> None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: full vocabulary), got {top_k}")
        self.model = verifier_model.eval().requires_grad_(False)
        self.top_k = top_k
        self.mask_token_id = mask_token_id

    @torch.no_grad()
    def __call__(self, inputs: dict[str, Any]) -> TeacherTargets:
        logits = self.model(
            input_ids=inputs["clean_ids"],
            attention_mask=inputs["clean_attention_mask"],
            position_ids=inputs["clean_position_ids"],
            logits_to_keep=inputs["clean_logits_to_keep"],
        ).logits
        # [Rb, k, V]; the verifier is autoregressive, so the token at column t is read from row t - 1
        slot_logits = gather_slot_logits(
            logits, inputs["teacher_index"], shifted=True, batch_index=inputs["teacher_row"]
        )
        slot_logits = slot_logits.to(torch.promote_types(slot_logits.dtype, torch.float32))
        if self.mask_token_id is not None:  # the drafter never proposes the mask token; renormalise without it
            slot_logits[..., self.mask_token_id] = float("-inf")
        logprobs = torch.log_softmax(slot_logits, dim=-1)
        if self.top_k == 0 or self.top_k >= logprobs.shape[-1]:
            return TeacherTargets(logprobs=logprobs, ids=None)
        values, ids = logprobs.topk(self.top_k, dim=-1)
        return TeacherTargets(logprobs=values, ids=ids)
