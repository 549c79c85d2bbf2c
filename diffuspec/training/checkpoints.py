"""Checkpoints that a kill cannot break, shared by the drafter trainers.

``AtomicCheckpointMixin`` goes before ``transformers.Trainer`` in a trainer's bases. ``_save_checkpoint`` writes
``checkpoint-N`` into a hidden staging folder and renames it into place when complete, so an interrupted save never
leaves a broken ``checkpoint-N`` (``get_last_checkpoint`` ignores the staging name), and weights that went
non-finite are never saved over a good checkpoint. It brings ``sharding.ShardedTrainingMixin`` along (FSDP2 on CPU
processes too, and full weights beside a sharded checkpoint's shards), so both drafter trainers have it.
"""

from __future__ import annotations

import os
import shutil

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from .sharding import ShardedTrainingMixin

STAGING_PREFIX = ".partial-"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or non-finite weights; nothing was stepped or saved after it."""


class AtomicCheckpointMixin(ShardedTrainingMixin):
    """Atomic ``checkpoint-N`` folders for a ``transformers.Trainer`` subclass (see the module docstring)."""

    def _last_checkpoint_hint(self) -> str:
        last = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        if last is None:
            return "no checkpoint was saved yet."
        return f"the last good checkpoint is {last}: resume with --resume_from_checkpoint {last} (lower the lr?)."

    def _save_checkpoint(self, model, trial) -> None:
        """Write ``checkpoint-N`` into ``.partial-checkpoint-N`` and rename it into place once complete."""
        self._check_weights_finite(model)
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save and os.path.exists(staging_root):
            shutil.rmtree(staging_root)  # left by an interrupted save of this same step
        self.accelerator.wait_for_everyone()
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)  # writes staging_root/checkpoint-N (see _get_output_dir)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            staged = os.path.join(staging_root, name)
            if self.state.best_model_checkpoint == staged:
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            if os.path.exists(final):  # a re-save of the same step: move the old one aside first
                os.replace(final, os.path.join(staging_root, "old"))
            os.replace(staged, final)  # atomic on one filesystem
            shutil.rmtree(staging_root)
            self._rotate_checkpoints(run_dir)
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_staging_root", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _rotate_checkpoints(self, run_dir: str) -> None:
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
        )

    def _check_weights_finite(self, model: nn.Module) -> None:
        # this process's shard of each sharded (FSDP2) parameter; the sum over processes below covers the rest
        local = [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]
        flags = [torch.isfinite(p.detach()).all() for p in local if p.numel()]
        bad = (~torch.stack(flags).all()).float() if flags else torch.zeros((), device=self.args.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad.to(self.args.device), reduction="sum")
        if bad.item():
            raise NonFiniteLossError(
                f"weights are non-finite at step {self.state.global_step} (an inf/NaN gradient); refusing to save "
                f"them over a checkpoint. {self._last_checkpoint_hint()}"
            )
