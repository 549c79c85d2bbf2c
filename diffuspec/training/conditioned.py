"""Training of the feature-conditioned block drafter (:class:`~diffuspec.models.conditioned.ConditionedDrafterModel`).

Each step the frozen verifier reads the batch (prompt + completion) once and returns the features of the
drafter's ``feature_layers``; a few anchors per sequence are drawn among the completion positions and the
drafter predicts, in one pass, the ``block_size`` tokens after every anchor. The objective is block
cross-entropy with DFlash's position decay ``exp(-(i-1)/gamma)`` plus, optionally, the expected accepted streak
(``losses.streak_loss`` over ``losses.log_greedy_success``), which is what greedy verification rewards.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast, Trainer, TrainingArguments

from ..models.conditioned import (
    ConditionedDrafterConfig,
    ConditionedDrafterModel,
    block_targets,
    verifier_features,
)
from .losses import (
    IGNORE_INDEX,
    block_ce_loss,
    drafter_logprobs,
    log_greedy_success,
    position_decay_weights,
    streak_loss,
)

__all__ = [
    "ConditionedCollator",
    "ConditionedDrafterTrainer",
    "completion_mask",
    "sample_anchors",
    "train_conditioned_drafter",
]

LOG_FILE = "train_log.json"  # the Trainer's log history, written next to the saved drafter


@dataclass
class ConditionedCollator:
    """Rows ``{prompt_ids, completion_ids}`` -> right-padded ``input_ids``, ``attention_mask``, ``prompt_lengths``.

    Right padding keeps every real token at its own absolute position, as at inference (the verifier is causal,
    so padding after a sequence changes none of its features)."""

    pad_token_id: int = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [list(row["prompt_ids"]) + list(row["completion_ids"]) for row in rows]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, sequence in enumerate(sequences):
            input_ids[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[i, : len(sequence)] = 1
        prompt_lengths = torch.tensor([len(row["prompt_ids"]) for row in rows], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "prompt_lengths": prompt_lengths}


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


class ConditionedDrafterTrainer(Trainer):
    """A Trainer whose loss drafts blocks after sampled completion anchors, conditioned on a frozen verifier.

    The verifier is held here, not in the model: only its embedding and LM head are lent to the drafter (frozen),
    and its features are computed without gradient on every batch."""

    def __init__(
        self,
        model: ConditionedDrafterModel,
        args: TrainingArguments,
        verifier_model: PreTrainedModel,
        *,
        anchors_per_sequence: int = 8,
        decay_gamma: float | None = None,
        streak_weight: float = 0.0,
        **kwargs,
    ) -> None:
        if anchors_per_sequence < 1:
            raise ValueError(f"anchors_per_sequence must be >= 1, got {anchors_per_sequence}")
        if streak_weight < 0:
            raise ValueError(f"streak_weight must be >= 0, got {streak_weight}")
        position_decay_weights(1, decay_gamma)  # validates gamma before any training
        super().__init__(model=model, args=args, **kwargs)
        self.verifier = verifier_model.to(device=self.args.device, dtype=torch.float32).eval().requires_grad_(False)
        model.attach_verifier(self.verifier)
        self.anchors_per_sequence = anchors_per_sequence
        self.decay_gamma = decay_gamma
        self.streak_weight = streak_weight
        self.anchor_generator = torch.Generator().manual_seed(args.seed)
        self._term_sums: dict[str, float] = {}
        self._term_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        prompt_lengths = inputs["prompt_lengths"]
        config = self.model.config  # the unwrapped drafter (model may be a DDP wrapper)
        with torch.no_grad():
            features = verifier_features(self.verifier, input_ids, config.feature_layers, attention_mask)
        anchors, anchor_ok = sample_anchors(
            prompt_lengths.cpu(), attention_mask.sum(dim=1).cpu(), self.anchors_per_sequence, self.anchor_generator
        )
        anchors, anchor_ok = anchors.to(input_ids.device), anchor_ok.to(input_ids.device)
        out = model(features=features, input_ids=input_ids, anchor_positions=anchors, compute_logits=True)
        labels, valid = block_targets(
            input_ids, anchors, config.block_size, valid=completion_mask(attention_mask, prompt_lengths)
        )
        valid = valid & anchor_ok[..., None]
        k = config.block_size
        logprobs = drafter_logprobs(out.logits, config.mask_token_id).reshape(-1, k, out.logits.shape[-1])
        labels = torch.where(valid, labels, IGNORE_INDEX).reshape(-1, k)
        valid = valid.reshape(-1, k)
        weights = position_decay_weights(k, self.decay_gamma, device=logprobs.device)
        ce = block_ce_loss(logprobs, labels, weights)
        loss = ce
        terms = {"block_ce": ce.detach()}
        if self.streak_weight > 0:
            streak = streak_loss(log_greedy_success(logprobs, labels), valid)
            loss = loss + self.streak_weight * streak
            terms["streak"] = streak.detach()
        if model.training:
            for name, value in terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(value)
            self._term_count += 1
        return (loss, {"logits": out.logits}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last training log (single process: a plain mean)."""
        if "loss" in logs and self._term_count:
            logs = {**logs, **{f"loss/{n}": round(v / self._term_count, 6) for n, v in self._term_sums.items()}}
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)


def _training_args(
    output_dir: Path, max_steps: int, batch_size: int, learning_rate: float, seed: int
) -> TrainingArguments:
    """The fixed recipe: cosine schedule with 5% warmup, a log every ~10% of the steps, no checkpoints."""
    return TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(0.05 * max_steps),
        logging_steps=max(1, max_steps // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def train_conditioned_drafter(
    verifier_path: str | Path,
    dataset_path: str | Path,
    output_dir: str | Path,
    *,
    num_layers: int = 1,
    block_size: int = 8,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    anchors_per_sequence: int = 8,
    decay_gamma: float | None = None,
    streak_weight: float = 0.0,
    seed: int = 0,
    feature_layers: list[int] | None = None,
) -> Path:
    """Train a conditioned drafter for the verifier folder on an alignment dataset; save it (plus the verifier's
    tokenizer and ``train_log.json``) in ``output_dir``, loadable with ``ConditionedDrafter.from_pretrained``."""
    output_dir = Path(output_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(verifier_path)
    if tokenizer.mask_token_id is None:
        raise ValueError(f"the tokenizer of {verifier_path} has no mask token; the drafter's slots need one")
    verifier = AutoModelForCausalLM.from_pretrained(verifier_path, dtype=torch.float32).eval()
    config = ConditionedDrafterConfig.for_verifier(
        verifier.config,
        mask_token_id=int(tokenizer.mask_token_id),
        num_hidden_layers=num_layers,
        block_size=block_size,
        feature_layers=feature_layers,
    )
    torch.manual_seed(seed)
    model = ConditionedDrafterModel(config, verifier=verifier)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = ConditionedDrafterTrainer(
        model,
        _training_args(output_dir, max_steps, batch_size, learning_rate, seed),
        verifier,
        anchors_per_sequence=anchors_per_sequence,
        decay_gamma=decay_gamma,
        streak_weight=streak_weight,
        train_dataset=datasets.load_from_disk(str(dataset_path)),
        data_collator=ConditionedCollator(pad_token_id=int(pad)),
    )
    trainer.train()
    output_dir.mkdir(parents=True, exist_ok=True)
    if (output_dir / "trainer").is_dir() and not any((output_dir / "trainer").iterdir()):
        (output_dir / "trainer").rmdir()  # the Trainer's output_dir; nothing is checkpointed into it
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / LOG_FILE).write_text(json.dumps(trainer.state.log_history, indent=1))
    return output_dir
