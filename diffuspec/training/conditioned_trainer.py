"""The trainer of the feature-conditioned block drafter (:class:`~diffuspec.models.conditioned.ConditionedDrafterModel`).

Each step the frozen verifier reads the batch (prompt + completion) once and returns the features of the
drafter's ``feature_layers``; a few anchors per sequence are drawn among the completion positions and the
drafter predicts, in one pass, the ``block_size`` tokens after every anchor. The objective is block
cross-entropy with DFlash's position decay ``exp(-(i-1)/gamma)`` plus, optionally, forward KL to the verifier's
own next-token distributions (its logits come from the same pass as the features) and the expected accepted
streak (``losses.streak_loss`` over ``losses.log_greedy_success``), which is what greedy verification rewards.
"""

from __future__ import annotations

import os

import torch
from peft import PeftModel
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

from ..drafters.conditioned import ConditionedDrafter
from ..drafters.vocabulary import DraftVocabulary
from ..models.conditioned import ConditionedDrafterModel, block_targets, verifier_features_and_logits
from .callbacks import AcceptanceCallback
from .checkpoints import AtomicCheckpointMixin
from .conditioned_collator import completion_mask, sample_anchors
from .conditioned_config import ConditionedTrainingConfig
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


def slot_labels(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_lengths: torch.Tensor,
    anchors: torch.Tensor,
    anchor_ok: torch.Tensor,
    block_size: int,
    columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What each drafted slot is scored against, one block a row: labels ``[B * A, block_size]`` and the boolean
    slots that score. A slot scores when its target is a completion token of an anchor with one (``anchor_ok``);
    with ``columns`` (``DraftVocabulary.columns``) labels are columns of the draft vocabulary and a target outside
    it scores nothing (it is never drafted). Labels of slots that do not score are ``IGNORE_INDEX``."""
    completion = completion_mask(attention_mask, prompt_lengths)
    labels, valid = block_targets(input_ids, anchors, block_size, valid=completion)
    valid = valid & anchor_ok[..., None]
    if columns is not None:
        labels = columns[labels.clamp(min=0)]
        valid = valid & (labels >= 0)
    labels = torch.where(valid, labels, IGNORE_INDEX)
    return labels.reshape(-1, block_size), valid.reshape(-1, block_size)


class ConditionedDrafterTrainer(AtomicCheckpointMixin, LossTermsMixin, Trainer):
    """A Trainer whose loss drafts blocks after sampled completion anchors, conditioned on a frozen verifier.

    The verifier is held here, not in the model: only its embedding and LM head are lent to the drafter (frozen),
    and its features are computed without gradient on every batch. Checkpoints are atomic (a kill never leaves a
    broken ``checkpoint-N``) and resume through the Trainer as usual; with a LoRA-wrapped drafter (a peft model)
    they hold the adapters, which the Trainer loads back on resume."""

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
        self.vocabulary = self._head_rows = self._vocab_index = None
        if args.draft_vocab is not None:
            config = model.config
            self.vocabulary = DraftVocabulary.load(args.draft_vocab)
            self.vocabulary.check_drafter(int(config.vocab_size), int(config.mask_token_id))
            self._head_rows = self.vocabulary.head(model.verifier_head.weight, model.verifier_head.bias)
            self._vocab_index = self.vocabulary.columns()
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, AcceptanceCallback):
                callback.bind(self)

    def acceptance_drafter(self, model: ConditionedDrafterModel) -> ConditionedDrafter:
        """The model being trained as the drafter ``AcceptanceCallback`` decodes with (its draft vocabulary too)."""
        return ConditionedDrafter(self.accelerator.unwrap_model(model), vocabulary=self.vocabulary)

    def _slot_logprobs(self, out, model) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs ``[B, A, k, V']`` of the drafted slots over the whole vocabulary (without the mask), or over the
        draft vocabulary's ids only, as the drafter proposes at inference; and the id -> column map (or None)."""
        if self._head_rows is None:
            return drafter_logprobs(out.logits, self.model.config.mask_token_id), None
        logits = self.accelerator.unwrap_model(model).lm_logits(out.hidden_states, self._head_rows)
        return drafter_logprobs(logits, None), self._vocab_index.to(logits.device)

    def _anchor_rng(self) -> torch.Generator:
        """A generator seeded by (seed, step, micro-batch): a resumed run draws the anchors the uninterrupted run
        drew, so its losses match step for step. The micro-batch is counted across processes (process r's i-th is
        i * world + r), so N processes draw what one process accumulating N micro-batches draws."""
        if self._anchor_step != self.state.global_step:
            self._anchor_step, self._anchor_calls = self.state.global_step, 0
        self._anchor_calls += 1
        call = (self._anchor_calls - 1) * self.args.world_size + self.args.process_index + 1
        seed = (self.args.seed * 1_000_003 + self.state.global_step) * 101 + call
        return torch.Generator().manual_seed(seed)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """As the Trainer's, except that LoRA adapters (checkpoints of a LoRA run) are saved without peft's
        resized-embedding check: it re-reads the base folder's config through the drafter's config class, which a
        DFlash checkpoint's Qwen3 config fails, and the drafter owns no embedding to save."""
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, PeftModel):
            super()._save(output_dir, state_dict)
            return
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir, state_dict=state_dict, save_embedding_layers=False)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

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
        out = model(
            features=features, input_ids=input_ids, anchor_positions=anchors, compute_logits=self._head_rows is None
        )
        k = config.block_size
        logprobs, columns = self._slot_logprobs(out, model)
        logprobs = logprobs.reshape(-1, k, logprobs.shape[-1])
        labels, valid = slot_labels(input_ids, attention_mask, prompt_lengths, anchors, anchor_ok, k, columns)
        weights = position_decay_weights(k, self.args.decay_gamma, device=logprobs.device)
        ce = block_ce_loss(logprobs, labels, weights)
        loss = ce
        terms = {"block_ce": ce.detach()}
        if self.args.kl_weight > 0:
            teacher = slot_logits(verifier_logits, anchors, k)
            if columns is not None:
                teacher = drafter_logprobs(teacher[..., self.vocabulary.ids.to(teacher.device)], None)
            else:
                teacher = drafter_logprobs(teacher, config.mask_token_id)
            kl = distillation_loss(logprobs, teacher.reshape_as(logprobs), valid, "forward", slot_weights=weights)
            loss = loss + self.args.kl_weight * kl
            terms["kl"] = kl.detach()
        if self.args.streak_weight > 0:
            streak = streak_loss(log_greedy_success(logprobs, labels), valid)
            loss = loss + self.args.streak_weight * streak
            terms["streak"] = streak.detach()
        if model.training:
            self._accumulate({f"loss/{name}": value for name, value in terms.items()})
        return (loss, {"logprobs": logprobs}) if return_outputs else loss
