"""Training of the feature-conditioned block drafter (:class:`~diffuspec.models.conditioned.ConditionedDrafterModel`).

Each step the frozen verifier reads the batch (prompt + completion) once and returns the features of the
drafter's ``feature_layers``; a few anchors per sequence are drawn among the completion positions and the
drafter predicts, in one pass, the ``block_size`` tokens after every anchor. The objective is block
cross-entropy with DFlash's position decay ``exp(-(i-1)/gamma)`` plus, optionally, forward KL to the verifier's
own next-token distributions (its logits come from the same pass as the features) and the expected accepted
streak (``losses.streak_loss`` over ``losses.log_greedy_success``), which is what greedy verification rewards.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..hub import resolve_local, write_diffuspec_config
from ..models.conditioned import (
    ConditionedDrafterConfig,
    ConditionedDrafterModel,
    block_targets,
    verifier_features_and_logits,
)
from .checkpoints import AtomicCheckpointMixin
from .collator import cut_row
from .config import DataArguments, parse_config
from .features import FeatureStore
from .inputs import check_examples, load_examples
from .losses import (
    IGNORE_INDEX,
    block_ce_loss,
    distillation_loss,
    drafter_logprobs,
    log_greedy_success,
    position_decay_weights,
    streak_loss,
)
from .terms import LossTermsMixin

__all__ = [
    "ConditionedCollator",
    "ConditionedDataArguments",
    "ConditionedDrafterTrainer",
    "ConditionedModelArguments",
    "ConditionedTrainingConfig",
    "completion_mask",
    "parse_conditioned_config",
    "run_conditioned_training",
    "sample_anchors",
    "train_conditioned_drafter",
]

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.json"  # the Trainer's log history, written next to the saved drafter


@dataclass
class ConditionedCollator:
    """Rows ``{prompt_ids, completion_ids}`` -> right-padded ``input_ids``, ``attention_mask``, ``prompt_lengths``.

    Right padding keeps every real token at its own absolute position, as at inference (the verifier is causal,
    so padding after a sequence changes none of its features)."""

    pad_token_id: int = 0
    max_prompt_length: int | None = None  # keep the last N prompt tokens
    max_completion_length: int | None = None  # keep the first N completion tokens
    features: FeatureStore | None = None  # offline features: rows carry their dataset index in "row"

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


def verifier_dtype(args: TrainingArguments) -> torch.dtype:
    """The frozen verifier runs in bf16 when training does (an 8B verifier in float32 would not fit beside the
    drafter), else in float32."""
    return torch.bfloat16 if args.bf16 else torch.float32


def slot_logits(logits: torch.Tensor, anchors: torch.Tensor, block_size: int) -> torch.Tensor:
    """Verifier logits ``[B, T, V]`` -> ``[B, A, block_size, V]``: slot i of anchor a targets the token at a + 1 + i,
    which the causal verifier predicts at position a + i (clamped at the end; those slots are masked out)."""
    positions = (anchors[..., None] + torch.arange(block_size, device=anchors.device)).clamp(max=logits.shape[1] - 1)
    index = positions.flatten(1)[..., None].expand(-1, -1, logits.shape[-1])
    return torch.gather(logits, 1, index).view(*positions.shape, logits.shape[-1])


class ConditionedDrafterTrainer(AtomicCheckpointMixin, LossTermsMixin, Trainer):
    """A Trainer whose loss drafts blocks after sampled completion anchors, conditioned on a frozen verifier.

    The verifier is held here, not in the model: only its embedding and LM head are lent to the drafter (frozen),
    and its features are computed without gradient on every batch. Checkpoints are atomic (a kill never leaves a
    broken ``checkpoint-N``) and resume through the Trainer as usual."""

    def __init__(
        self,
        model: ConditionedDrafterModel,
        args: ConditionedTrainingConfig,
        verifier_model: PreTrainedModel,
        **kwargs,
    ) -> None:
        super().__init__(model=model, args=args, **kwargs)
        dtype = verifier_dtype(self.args)
        self.verifier = verifier_model.to(device=self.args.device, dtype=dtype).eval().requires_grad_(False)
        model.attach_verifier(self.verifier)
        self._anchor_step, self._anchor_calls = -1, 0

    def _anchor_rng(self) -> torch.Generator:
        """A generator seeded by (seed, step, micro-batch): a resumed run draws the anchors the uninterrupted run
        drew, so its losses match step for step."""
        if self._anchor_step != self.state.global_step:
            self._anchor_step, self._anchor_calls = self.state.global_step, 0
        self._anchor_calls += 1
        seed = (self.args.seed * 1_000_003 + self.state.global_step) * 101 + self._anchor_calls
        return torch.Generator().manual_seed(seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        prompt_lengths = inputs["prompt_lengths"]
        config = self.model.config  # the unwrapped drafter (model may be a DDP wrapper)
        if "features" in inputs:  # offline: computed by precompute_features, no verifier pass
            features, verifier_logits = inputs["features"], None
        else:
            features, verifier_logits = verifier_features_and_logits(
                self.verifier, input_ids, config.feature_layers, attention_mask, all_logits=self.args.kl_weight > 0
            )
        anchors, anchor_ok = sample_anchors(
            prompt_lengths.cpu(), attention_mask.sum(dim=1).cpu(), self.args.anchors_per_sequence, self._anchor_rng()
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
        weights = position_decay_weights(k, self.args.decay_gamma, device=logprobs.device)
        ce = block_ce_loss(logprobs, labels, weights)
        loss = ce
        terms = {"block_ce": ce.detach()}
        if self.args.kl_weight > 0:
            teacher = drafter_logprobs(slot_logits(verifier_logits, anchors, k), config.mask_token_id)
            kl = distillation_loss(logprobs, teacher.reshape_as(logprobs), valid, "forward", slot_weights=weights)
            loss = loss + self.args.kl_weight * kl
            terms["kl"] = kl.detach()
        if self.args.streak_weight > 0:
            streak = streak_loss(log_greedy_success(logprobs, labels), valid)
            loss = loss + self.args.streak_weight * streak
            terms["streak"] = streak.detach()
        if model.training:
            self._accumulate({f"loss/{name}": value for name, value in terms.items()})
        return (loss, {"logits": out.logits}) if return_outputs else loss


@dataclass
class ConditionedModelArguments:
    """The verifier to condition on and the drafter's shape (or a saved drafter to continue from)."""

    verifier_name_or_path: str = field(metadata={"help": "Verifier folder or Hub id (also gives the tokenizer)."})
    drafter_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved conditioned drafter to continue from (null: a new one)."}
    )
    num_hidden_layers: int = field(default=1, metadata={"help": "Drafter layers (1-5)."})
    block_size: int = field(default=8, metadata={"help": "Mask slots per block: the largest draft length k."})
    feature_layers: list[int] | None = field(
        default=None, metadata={"help": "Verifier hidden-state indices to fuse (null: three spread low/mid/high)."}
    )

    def __post_init__(self) -> None:
        if not 1 <= self.num_hidden_layers <= 5:
            raise ValueError(f"num_hidden_layers must be in 1..5, got {self.num_hidden_layers}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")


@dataclass
class ConditionedTrainingConfig(TrainingArguments):
    """``TrainingArguments`` plus the conditioned objective: block CE with position decay, forward KL to the
    verifier and the expected accepted streak, each weighted."""

    anchors_per_sequence: int = field(default=8, metadata={"help": "Blocks drafted per training sequence."})
    decay_gamma: float | None = field(default=None, metadata={"help": "Slot i weighs exp(-(i-1)/gamma); null: 1."})
    kl_weight: float = field(default=0.0, metadata={"help": "Forward KL to the verifier's next-token distributions."})
    streak_weight: float = field(default=0.0, metadata={"help": "Expected accepted streak under greedy checking."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.remove_unused_columns = False  # the collator reads prompt_ids / completion_ids itself
        if self.anchors_per_sequence < 1:
            raise ValueError(f"anchors_per_sequence must be >= 1, got {self.anchors_per_sequence}")
        for name in ("kl_weight", "streak_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        position_decay_weights(1, self.decay_gamma)  # refuses gamma <= 0 before any model loads


@dataclass
class ConditionedDataArguments(DataArguments):
    """The alignment data, plus optional precomputed verifier features (``train/precompute_features.py``)."""

    features_path: str | None = field(
        default=None,
        metadata={"help": "Folder of precomputed verifier features for dataset_path (null: the verifier runs online)."},
    )


CONDITIONED_CONFIG_CLASSES = (ConditionedModelArguments, ConditionedDataArguments, ConditionedTrainingConfig)


def parse_conditioned_config(
    argv: list[str] | None = None,
) -> tuple[ConditionedModelArguments, ConditionedDataArguments, ConditionedTrainingConfig]:
    """``--config file.yaml`` plus ``--key value`` overrides, unknown keys refused (as ``parse_config``)."""
    return parse_config(argv, CONDITIONED_CONFIG_CLASSES)


def run_conditioned_training(
    model_args: ConditionedModelArguments,
    data_args: ConditionedDataArguments,
    training_args: ConditionedTrainingConfig,
) -> ConditionedDrafterTrainer:
    """Check the data and tokenizer, build (or load) the drafter, train (resuming from the last checkpoint in
    ``output_dir``), and save the drafter, the verifier's tokenizer, ``diffuspec_config.json`` and ``train_log.json``
    in ``output_dir``; the folder loads with ``ConditionedDrafter.from_pretrained`` and pushes with ``diffuspec push``."""
    dataset = load_examples(data_args.dataset_path)
    check_examples(dataset, f"dataset_path {data_args.dataset_path}")
    verifier_path = resolve_local(model_args.verifier_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(verifier_path)
    if tokenizer.mask_token_id is None:
        raise ValueError(
            f"the tokenizer of {model_args.verifier_name_or_path} has no mask token; the drafter's slots need one "
            "(add one, e.g. tokenizer.add_special_tokens({'mask_token': '<|mask|>'}), within the embedding rows)"
        )
    verifier = AutoModelForCausalLM.from_pretrained(verifier_path, dtype=verifier_dtype(training_args)).eval()
    if model_args.drafter_name_or_path is not None:
        model = ConditionedDrafterModel.from_pretrained(resolve_local(model_args.drafter_name_or_path))
        model.attach_verifier(verifier)
    else:
        config = ConditionedDrafterConfig.for_verifier(
            verifier.config,
            mask_token_id=int(tokenizer.mask_token_id),
            num_hidden_layers=model_args.num_hidden_layers,
            block_size=model_args.block_size,
            feature_layers=model_args.feature_layers,
            verifier_name=model_args.verifier_name_or_path,
        )
        torch.manual_seed(training_args.seed)
        model = ConditionedDrafterModel(config, verifier=verifier)
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and os.path.isdir(training_args.output_dir):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is not None:
            logger.info(f"Checkpoint detected, resuming training at {checkpoint}")
    store = None
    if data_args.features_path is not None:
        if training_args.kl_weight > 0:
            raise ValueError(
                "kl_weight > 0 needs the verifier's distributions, which offline features do not carry: set "
                "kl_weight 0 or train online (features_path null)"
            )
        store = FeatureStore(data_args.features_path)
        cuts = (data_args.max_prompt_length, data_args.max_completion_length)
        store.check(model_args.verifier_name_or_path, model.config.feature_layers, len(dataset), cuts)
        dataset = dataset.add_column("row", list(range(len(dataset))))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = ConditionedDrafterTrainer(
        model,
        training_args,
        verifier,
        train_dataset=dataset,
        data_collator=ConditionedCollator(
            pad_token_id=int(pad),
            max_prompt_length=data_args.max_prompt_length,
            max_completion_length=data_args.max_completion_length,
            features=store,
        ),
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)  # weights, config and the tokenizer (processing_class)
    if trainer.args.should_save:
        out = Path(training_args.output_dir)
        objectives = {"block_ce": 1.0, "kl": training_args.kl_weight, "streak": training_args.streak_weight}
        write_diffuspec_config(
            out,
            mask_token_id=model.config.mask_token_id,
            shifted=False,  # slot i is read from its own row: it predicts the token at anchor + 1 + i
            verifier=model_args.verifier_name_or_path,
            verifier_vocab_size=int(model.config.vocab_size),
            objectives={name: weight for name, weight in objectives.items() if weight > 0},
        )
        (out / LOG_FILE).write_text(json.dumps(trainer.state.log_history, indent=1))
    trainer.accelerator.wait_for_everyone()
    return trainer


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
    kl_weight: float = 0.0,
    streak_weight: float = 0.0,
    seed: int = 0,
    feature_layers: list[int] | None = None,
) -> Path:
    """:func:`run_conditioned_training` with a fixed small recipe (cosine schedule with 5% warmup, a log every ~10%
    of the steps, no checkpoints): the quickstart's and the tests' entry point."""
    output_dir = Path(output_dir)
    training_args = ConditionedTrainingConfig(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(0.05 * max_steps),
        logging_steps=max(1, max_steps // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        anchors_per_sequence=anchors_per_sequence,
        decay_gamma=decay_gamma,
        kl_weight=kl_weight,
        streak_weight=streak_weight,
    )
    model_args = ConditionedModelArguments(
        verifier_name_or_path=str(verifier_path),
        num_hidden_layers=num_layers,
        block_size=block_size,
        feature_layers=feature_layers,
    )
    data_args = ConditionedDataArguments(
        dataset_path=[str(dataset_path)], max_prompt_length=None, max_completion_length=None
    )
    run_conditioned_training(model_args, data_args, training_args)
    return output_dir
