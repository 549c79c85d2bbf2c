"""DrafterTrainer: ``transformers.Trainer`` with the drafter objectives in ``compute_loss``.

The base class keeps the loop, accumulation, DDP / DeepSpeed / FSDP, schedules and resumption. This subclass adds:

- ``compute_loss``: one forward pass over the collator's diffusion and block rows, the weighted objectives of
  ``drafter_objectives``, a stop on a non-finite loss (before the optimizer step, naming the step) and per-term
  bookkeeping;
- the averaged terms join the Trainer's own loss log (``terms.LossTermsMixin``: ``loss/ce``, ``block/top1``, ...);
- atomic checkpoints and no non-finite weights saved (``checkpoints.AtomicCheckpointMixin``);
- ``_save``: each saved model folder gets its ``diffuspec_config.json`` (mask id, shift), so checkpoints load with
  ``diffuspec.loading.load_diffusion_model`` and ``DiffusionDrafter.from_pretrained``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer

from ..drafter_config import write_diffuspec_config
from .callbacks import AcceptanceCallback, CollatorEpochCallback
from .checkpoints import AtomicCheckpointMixin, NonFiniteLossError
from .collator import TEACHER_COLUMNS, DrafterCollator
from .config import DrafterTrainingConfig
from .losses import (
    IGNORE_INDEX,
    block_ce_loss,
    coarsen_to_topk,
    distillation_loss,
    drafter_logprobs,
    expected_streak,
    gather_slot_logits,
    greedy_accepted_length,
    log_acceptance,
    log_greedy_success,
    masked_diffusion_loss,
    position_decay_weights,
    streak_loss,
    token_logprobs,
)
from .teacher import OfflineTeacher, OnlineTeacher, TeacherTargets
from .terms import LossTermsMixin

#: Objective name -> its weight field on DrafterTrainingConfig.
OBJECTIVE_WEIGHTS = {"ce": "ce_weight", "block_ce": "block_ce_weight", "kl": "kl_weight", "streak": "streak_weight"}


def drafter_objectives(
    logits: torch.Tensor,
    inputs: dict[str, Any],
    args: DrafterTrainingConfig,
    mask_token_id: int,
    shifted: bool,
    teacher: TeacherTargets | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The enabled objectives of one batch, unweighted, plus detached block metrics.

    logits [R, W, V]: the last W columns of the collator's rows (Rm diffusion rows, then Rb block rows).
    Step 1: masked-diffusion CE on the diffusion rows. Step 2: the block slots' log-probs (mask token excluded,
    as at inference). Step 3: block CE, distillation and the streak on them, slot i weighted exp(-(i-1)/gamma).
    """
    terms: dict[str, torch.Tensor] = {}
    metrics: dict[str, torch.Tensor] = {}
    num_mdm = inputs["mdm_labels"].shape[0] if "mdm_labels" in inputs else 0

    # Step 1: masked diffusion; column 0 has no row before it when shifted, and the collator never labels it
    if args.ce_weight > 0:
        labels = inputs["mdm_labels"][:, int(shifted) :]
        index = torch.arange(int(shifted), inputs["mdm_labels"].shape[1], device=logits.device).expand(num_mdm, -1)
        logprobs = drafter_logprobs(gather_slot_logits(logits[:num_mdm], index, shifted), mask_token_id)
        terms["ce"] = masked_diffusion_loss(logprobs, labels, inputs["mdm_weights"])
    if "block_labels" not in inputs:
        return terms, metrics

    # Step 2: draft-time blocks, read exactly as DiffusionDrafter reads its slots
    labels = inputs["block_labels"]
    valid = labels != IGNORE_INDEX
    logprobs = drafter_logprobs(gather_slot_logits(logits[num_mdm:], inputs["block_index"], shifted), mask_token_id)
    slot_weights = position_decay_weights(labels.shape[1], args.decay_gamma, device=logits.device)
    student = target = None
    if teacher is not None:
        if teacher.ids is None:
            student, target = logprobs, teacher.logprobs
        else:
            student, target = coarsen_to_topk(logprobs, teacher.ids, teacher.logprobs, mask_token_id)

    # Step 3: block objectives
    if args.block_ce_weight > 0:
        terms["block_ce"] = block_ce_loss(logprobs, labels, slot_weights)
    if args.kl_weight > 0:
        terms["kl"] = distillation_loss(student, target, valid, args.kl_kind, args.jsd_beta, slot_weights)
    if args.streak_weight > 0:
        if args.streak_kind == "likelihood":
            log_success = token_logprobs(logprobs, labels)
        elif args.streak_kind == "acceptance":
            log_success = log_acceptance(student, target)
        else:
            log_success = log_greedy_success(logprobs, labels, args.greedy_temperature)
        terms["streak"] = streak_loss(log_success, valid)

    with torch.no_grad():
        hits = (logprobs.argmax(dim=-1) == labels) & valid
        metrics["block/top1"] = hits.sum() / valid.sum().clamp(min=1)
        metrics["block/greedy_accepted"] = greedy_accepted_length(logprobs, labels).float().mean()
        metrics["block/expected_streak"] = expected_streak(token_logprobs(logprobs, labels), valid).mean()
    return terms, metrics


class DrafterTrainer(AtomicCheckpointMixin, LossTermsMixin, Trainer):
    """Trains a diffusion drafter with the objective mix of ``DrafterTrainingConfig``.

    ``verifier_model`` serves as the online teacher when an objective needs the verifier's distributions and the
    dataset has no ``teacher_topk_*`` columns. ``AcceptanceCallback`` instances among ``callbacks`` are bound to
    this trainer. The default collator is a ``DrafterCollator`` built from ``args``.
    """

    loss_is_scaled_for_ga = False  # every term is a per-micro-batch mean; the Trainer divides by the GA steps

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        args: DrafterTrainingConfig,
        train_dataset,
        *,
        mask_token_id: int,
        shifted: bool,
        verifier_model: PreTrainedModel | None = None,
        max_prompt_length: int | None = None,
        max_completion_length: int | None = None,
        data_collator=None,
        **kwargs,
    ) -> None:
        self.mask_token_id, self.shifted = int(mask_token_id), bool(shifted)
        columns = set(getattr(train_dataset, "column_names", None) or [])
        offline = args.needs_teacher and all(c in columns for c in TEACHER_COLUMNS)
        if args.needs_teacher and not offline and verifier_model is None:
            raise ValueError(
                "kl_weight > 0 (or streak_kind: acceptance) needs the verifier's distributions, but the dataset has "
                f"no {list(TEACHER_COLUMNS)} columns and no verifier_model was given; pass the verifier (online "
                "teacher) or generate the data with teacher top-k"
            )
        if data_collator is None:
            config = getattr(model, "config", None)
            data_collator = DrafterCollator(
                mask_token_id=self.mask_token_id,
                pad_token_id=_pad_token_id(config),
                shifted=self.shifted,
                diffusion_rows=args.ce_weight > 0,
                block_size=args.block_size if args.uses_blocks else 0,
                block_size_min=args.block_size_min,
                anchors_per_sequence=args.anchors_per_sequence,
                context_window=args.context_window,
                mask_eps=args.mask_eps,
                max_prompt_length=max_prompt_length,
                max_completion_length=max_completion_length,
                teacher_columns=offline,
                clean_rows=args.needs_teacher and not offline,
                seed=args.seed,
            )
        super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator, **kwargs)
        if isinstance(data_collator, DrafterCollator):
            self.add_callback(CollatorEpochCallback(data_collator))
        self.teacher = None
        if args.needs_teacher:
            if offline:
                self.teacher = OfflineTeacher()
            else:
                verifier = verifier_model.to(self.args.device)
                self.teacher = OnlineTeacher(verifier, top_k=args.teacher_topk, mask_token_id=self.mask_token_id)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, AcceptanceCallback):
                callback.bind(self)

    def acceptance_drafter(self, model: PreTrainedModel):
        """The model being trained as the drafter ``AcceptanceCallback`` decodes with."""
        from ..drafters.diffusion import DiffusionDrafter

        return DiffusionDrafter(
            model, self.mask_token_id, shifted=self.shifted, context_window=self.args.context_window,
            check_attention=False,
        )  # fmt: skip

    # -- loss -------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
            logits_to_keep=inputs["logits_to_keep"],
            use_cache=False,
        ).logits
        teacher = self.teacher(inputs) if self.teacher is not None else None
        terms, metrics = drafter_objectives(logits, inputs, self.args, self.mask_token_id, self.shifted, teacher)
        loss = sum(getattr(self.args, OBJECTIVE_WEIGHTS[name]) * value for name, value in terms.items())
        self._stop_if_nonfinite(loss, terms)
        if model.training:
            self._accumulate({f"loss/{name}": value for name, value in terms.items()} | metrics)
        return (loss, {"logits": logits}) if return_outputs else loss

    def _stop_if_nonfinite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Raise before backward if any process saw a NaN/inf loss; all processes raise together (no hang)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() == 0:
            return
        values = {name: float(value.detach()) for name, value in terms.items()}
        raise NonFiniteLossError(
            f"non-finite training loss at step {self.state.global_step + 1} (terms on this process: {values}). "
            f"Stopped before the optimizer step, so no weights or checkpoints changed; {self._last_checkpoint_hint()}"
        )

    # -- saving -----------------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            objectives = {name: getattr(self.args, weight) for name, weight in OBJECTIVE_WEIGHTS.items()}
            write_diffuspec_config(
                output_dir or self.args.output_dir,
                mask_token_id=self.mask_token_id,
                shifted=self.shifted,
                objectives={name: weight for name, weight in objectives.items() if weight > 0},
            )


def _pad_token_id(config) -> int:
    """Any in-vocabulary id pads: padded keys are masked out and never labelled."""
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0
