"""Batches for drafter training: one forward pass serves every objective.

Each example ``{"prompt_ids", "completion_ids"[, "teacher_topk_ids", "teacher_topk_logprobs"]}`` becomes

- one *diffusion row* (``masked_diffusion_loss``): prompt + completion, each completion token replaced by the mask
  token with probability ``t ~ U(eps, 1)``, the prompt never masked;
- ``anchors_per_sequence`` *block rows* (block CE, distillation, streaks): for an anchor ``a`` in the completion,
  ``prompt + completion[:a] + [MASK] * k``, the k slots labelled ``completion[a:a + k]`` and everything after the
  block dropped. This is exactly the drafter's input at inference, where the prefix is the committed sequence
  (cut to its last ``context_window`` tokens when the drafter reads a window).

Rows are left-padded with explicit ``position_ids``, so each row's tokens sit at positions 0..n-1 exactly as in
an unpadded inference pass (padding keys are masked out), and every row ends at the same column: the logits the
objectives need are the last ``logits_to_keep`` columns of every row.

Randomness (mask ratio, masked positions, anchors, block lengths) comes from a generator seeded by
``(seed, epoch, example tokens)``. A batch is therefore a pure function of its examples, the seed and the epoch:
independent of batch composition, process count, dataloader prefetching and resumption. The trainer sets
``epoch`` at each epoch start (``DrafterTrainer``); keep ``dataloader_persistent_workers`` off so workers see it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .losses import IGNORE_INDEX

REQUIRED_COLUMNS = ("prompt_ids", "completion_ids")
TEACHER_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs")


def example_generator(seed: int, epoch: int, prompt: Sequence[int], completion: Sequence[int]) -> torch.Generator:
    """A CPU generator seeded by a hash of (seed, epoch, prompt, completion)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{seed}:{epoch}:".encode())
    digest.update(torch.tensor(list(prompt) + [-1] + list(completion), dtype=torch.int64).numpy().tobytes())
    return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))


def sample_diffusion_mask(length: int, eps: float, generator: torch.Generator) -> tuple[float, torch.Tensor]:
    """Mask ratio ``t = eps + (1 - eps) u`` (u ~ U(0, 1)) and a [length] bool mask, each entry True w.p. t."""
    t = eps + (1.0 - eps) * float(torch.rand((), generator=generator))
    return t, torch.rand(length, generator=generator) < t


def sample_anchors(completion_length: int, count: int, generator: torch.Generator) -> list[int]:
    """``min(count, completion_length)`` distinct anchors in [0, completion_length), in increasing order."""
    chosen = torch.randperm(completion_length, generator=generator)[:count]
    return sorted(int(a) for a in chosen)


def left_pad(rows: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids`` (0 at each row's first real token)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    positions = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention[i, length - len(row) :] = 1
        positions[i, length - len(row) :] = torch.arange(len(row))
    return {"input_ids": ids, "attention_mask": attention, "position_ids": positions}


def cut_row(
    row: dict[str, Any], max_prompt_length: int | None, max_completion_length: int | None
) -> tuple[list[int], list[int]]:
    """(prompt, completion) cut as training reads them: the last N prompt tokens (the end is what the completion
    continues), the first N completion tokens. Offline features are computed on rows cut the same way."""
    prompt, completion = list(row["prompt_ids"]), list(row["completion_ids"])
    if max_prompt_length is not None:
        prompt = prompt[-max_prompt_length:]
    if max_completion_length is not None:
        completion = completion[:max_completion_length]
    return prompt, completion


@dataclass
class DrafterCollator:
    """Pads prompt + completion and builds inputs and targets for every objective (see the module docstring).

    Output (R = Rm diffusion rows followed by Rb block rows, L the padded length, W = ``logits_to_keep``):

    - ``input_ids``, ``attention_mask``, ``position_ids`` [R, L]; ``logits_to_keep`` (int) W.
    - diffusion rows: ``mdm_labels`` [Rm, W] (clean token at masked positions, else ``IGNORE_INDEX``; column j is
      position L - W + j), ``mdm_weights`` [Rm] = 1 / (t * completion length).
    - block rows: ``block_index`` [Rb, k] (column of each slot among the last W), ``block_labels`` [Rb, k]
      (``IGNORE_INDEX`` for slots past the completion or past the row's own block length).
    - ``teacher_topk_ids`` / ``teacher_topk_logprobs`` [Rb, k, K] with ``teacher_columns`` (offline teacher).
    - ``clean_ids`` / ``clean_attention_mask`` / ``clean_position_ids`` [B, Lc], ``clean_logits_to_keep`` (int),
      ``teacher_row`` [Rb] (example of each block row), ``teacher_index`` [Rb, k] (column of each slot's token in
      the clean row) with ``clean_rows`` (online teacher: the verifier reads the clean rows).
    """

    mask_token_id: int
    pad_token_id: int
    shifted: bool
    diffusion_rows: bool = True
    block_size: int = 0  # 0: no block rows
    block_size_min: int | None = None  # None: every block has block_size slots
    anchors_per_sequence: int = 4
    context_window: int | None = None  # block rows keep the last N prefix tokens, as the drafter at inference
    mask_eps: float = 1e-3
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    teacher_columns: bool = False
    clean_rows: bool = False
    seed: int = 0
    epoch: int = 0

    def __post_init__(self) -> None:
        if not (self.diffusion_rows or self.block_size > 0):
            raise ValueError("DrafterCollator builds nothing: enable diffusion_rows or set block_size > 0")
        if self.block_size > 0 and not 1 <= (self.block_size_min or self.block_size) <= self.block_size:
            raise ValueError(f"block_size_min must be in [1, block_size={self.block_size}], got {self.block_size_min}")

    # -- one example ------------------------------------------------------------------------------------------

    def _example(self, index: int, feature: dict[str, Any]) -> tuple[list[int], list[int], dict[str, Any]]:
        missing = [c for c in REQUIRED_COLUMNS if c not in feature]
        if missing:
            raise KeyError(f"example {index} lacks {missing}; drafter data needs columns {list(REQUIRED_COLUMNS)}")
        prompt, completion = cut_row(feature, self.max_prompt_length, self.max_completion_length)
        if not prompt or not completion:
            raise ValueError(f"example {index} has an empty prompt or completion; drafting needs both")
        if self.mask_token_id in prompt or self.mask_token_id in completion:
            raise ValueError(f"example {index} contains the mask token id {self.mask_token_id}")
        extra = {}
        if self.teacher_columns:
            n = len(completion)
            extra["ids"] = feature["teacher_topk_ids"][:n]
            extra["logprobs"] = feature["teacher_topk_logprobs"][:n]
            if len(extra["ids"]) != n or len(extra["logprobs"]) != n:
                raise ValueError(f"example {index}: teacher top-k rows must match completion_ids ({n} rows)")
        return prompt, completion, extra

    # -- the batch --------------------------------------------------------------------------------------------

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        k_max = self.block_size
        k_min = self.block_size_min or k_max
        mdm_rows: list[list[int]] = []
        block_rows: list[list[int]] = []
        needed = 1  # logits columns every row needs at its end
        mdm: list[tuple[list[int], list[int], float]] = []  # (completion, masked positions, weight)
        blocks: list[tuple[int, int, int, int]] = []  # (example, anchor, block length, completion length)
        examples = []
        for index, feature in enumerate(features):
            prompt, completion, extra = self._example(index, feature)
            examples.append((prompt, completion, extra))
            generator = example_generator(self.seed, self.epoch, prompt, completion)
            if self.diffusion_rows:
                t, masked = sample_diffusion_mask(len(completion), self.mask_eps, generator)
                noisy = [self.mask_token_id if m else tok for tok, m in zip(completion, masked.tolist(), strict=True)]
                mdm_rows.append(prompt + noisy)
                mdm.append((completion, masked.nonzero()[:, 0].tolist(), 1.0 / (t * len(completion))))
                needed = max(needed, len(completion) + self.shifted)
            if k_max > 0:
                for anchor in sample_anchors(len(completion), self.anchors_per_sequence, generator):
                    k = int(torch.randint(k_min, k_max + 1, (), generator=generator))
                    prefix = prompt + completion[:anchor]
                    if self.context_window is not None:
                        prefix = prefix[-self.context_window :]
                    block_rows.append(prefix + [self.mask_token_id] * k)
                    blocks.append((index, anchor, k, len(completion)))
                    needed = max(needed, k + self.shifted)

        batch: dict[str, Any] = left_pad(mdm_rows + block_rows, self.pad_token_id)
        width = needed
        batch["logits_to_keep"] = width
        if self.diffusion_rows:
            labels = torch.full((len(mdm), width), IGNORE_INDEX, dtype=torch.long)
            for r, (completion, positions, _) in enumerate(mdm):
                start = width - len(completion)
                labels[r, [start + p for p in positions]] = torch.tensor(
                    [completion[p] for p in positions], dtype=torch.long
                )
            batch["mdm_labels"] = labels
            batch["mdm_weights"] = torch.tensor([w for *_, w in mdm], dtype=torch.float32)
        if k_max > 0:
            batch.update(self._block_targets(examples, blocks, width, k_max))
        if self.clean_rows:
            batch.update(self._clean_rows(examples, blocks, k_max))
        return batch

    def _block_targets(self, examples, blocks, width: int, k_max: int) -> dict[str, torch.Tensor]:
        slots = torch.arange(k_max)
        index = torch.full((len(blocks), k_max), width - 1, dtype=torch.long)
        labels = torch.full((len(blocks), k_max), IGNORE_INDEX, dtype=torch.long)
        out: dict[str, torch.Tensor] = {}
        if self.teacher_columns:
            top_k = len(examples[0][2]["ids"][0])
            ids = torch.arange(top_k).expand(len(blocks), k_max, top_k).clone()
            logprobs = torch.full((len(blocks), k_max, top_k), -math.log(top_k))  # benign filler, never scored
        for r, (example, anchor, k, n) in enumerate(blocks):
            completion = examples[example][1]
            index[r, :k] = width - k + slots[:k]
            scored = min(k, n - anchor)
            labels[r, :scored] = torch.tensor(completion[anchor : anchor + scored])
            if self.teacher_columns:
                extra = examples[example][2]
                ids[r, :scored] = torch.tensor(extra["ids"][anchor : anchor + scored], dtype=torch.long)
                logprobs[r, :scored] = torch.tensor(extra["logprobs"][anchor : anchor + scored], dtype=torch.float32)
        out["block_index"], out["block_labels"] = index, labels
        if self.teacher_columns:
            out["teacher_topk_ids"], out["teacher_topk_logprobs"] = ids, logprobs
        return out

    def _clean_rows(self, examples, blocks, k_max: int) -> dict[str, Any]:
        clean = left_pad([p + c for p, c, _ in examples], self.pad_token_id)
        width = max(len(c) for _, c, _ in examples) + 1  # the row before the first completion token is needed
        teacher_index = torch.full((len(blocks), k_max), width - 1, dtype=torch.long)
        for r, (_, anchor, k, n) in enumerate(blocks):
            scored = min(k, n - anchor)
            # completion token c sits at column width - n + c; the verifier (an AR model) predicts it one row earlier
            teacher_index[r, :scored] = width - n + anchor + torch.arange(scored)
        return {
            "clean_ids": clean["input_ids"],
            "clean_attention_mask": clean["attention_mask"],
            "clean_position_ids": clean["position_ids"],
            "clean_logits_to_keep": width,
            "teacher_row": torch.tensor([b[0] for b in blocks], dtype=torch.long),
            "teacher_index": teacher_index,
        }
