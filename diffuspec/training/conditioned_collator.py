"""Batches for the feature-conditioned drafter: right-padded prompt + completion rows, and the anchors of its blocks.

Right padding keeps every real token at its own absolute position, as at inference (the verifier is causal, so
padding after a sequence changes none of its features). Offline features, when given, come from a ``FeatureStore``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .collator import cut_row
from .features import FeatureStore


@dataclass
class ConditionedCollator:
    """Rows ``{prompt_ids, completion_ids}`` -> right-padded ``input_ids``, ``attention_mask``, ``prompt_lengths``.

    Right padding keeps every real token at its own absolute position, as at inference (the verifier is causal,
    so padding after a sequence changes none of its features)."""

    pad_token_id: int = 0
    max_prompt_length: int | None = None  # keep the last N prompt tokens
    max_completion_length: int | None = None  # keep the first N completion tokens
    # offline features, a FeatureStore or any sequence of [tokens, F] tensors: rows carry their index in "row"
    features: FeatureStore | Sequence[torch.Tensor] | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        parts = [cut_row(row, self.max_prompt_length, self.max_completion_length) for row in rows]
        sequences = [prompt + completion for prompt, completion in parts]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, sequence in enumerate(sequences):
            input_ids[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[i, : len(sequence)] = 1
        prompt_lengths = torch.tensor([len(prompt) for prompt, _ in parts], dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "prompt_lengths": prompt_lengths}
        if self.features is not None:
            stored = [self.features[int(row["row"])] for row in rows]
            features = torch.zeros((len(rows), width, stored[0].shape[-1]), dtype=torch.float32)
            for i, (sequence, f) in enumerate(zip(sequences, stored, strict=True)):
                if f.shape[0] != len(sequence):
                    raise ValueError(
                        f"stored features of row {int(rows[i]['row'])} cover {f.shape[0]} tokens, not {len(sequence)}"
                    )
                features[i, : len(sequence)] = f.float()
            batch["features"] = features
        return batch


def completion_mask(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, T]``: the completion tokens (the only tokens a drafter is scored on)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None]
    return attention_mask.bool() & (positions >= prompt_lengths.to(attention_mask.device)[:, None])


def sample_anchors(
    prompt_lengths: torch.Tensor, lengths: torch.Tensor, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` anchors per sequence, uniform over the positions whose next token is a completion token
    (``prompt_len - 1 <= a <= len - 2``), distinct while there are enough; also a boolean ``[B, count]`` that is
    False for the anchors of a sequence with an empty completion (those read position 0 and score nothing)."""
    low = (prompt_lengths - 1).clamp(min=0)
    spans = (lengths - 1 - low).clamp(min=0)  # number of candidate anchors
    anchors = torch.zeros((prompt_lengths.shape[0], count), dtype=torch.long)
    for row, (start, span) in enumerate(zip(low.tolist(), spans.tolist(), strict=True)):
        if span == 0:
            continue
        picks = torch.randperm(span, generator=generator)[:count]
        if picks.numel() < count:  # short completion: fill up with repeats
            extra = torch.randint(span, (count - picks.numel(),), generator=generator)
            picks = torch.cat([picks, extra])
        anchors[row] = start + picks.sort().values
    return anchors, (spans > 0)[:, None].expand(-1, count)
