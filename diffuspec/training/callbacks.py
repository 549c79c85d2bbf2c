"""Trainer callbacks: acceptance measured with the real speculative loop, and the collator's epoch."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, TrainerCallback

from ..decoding.config import DecodeConfig
from ..decoding.loop import SpeculativeDecoder
from .collator import DrafterCollator


class AcceptanceCallback(TrainerCallback):
    """Every ``every_n_steps`` steps, decode held-out prompts greedily with ``SpeculativeDecoder`` and the drafter
    being trained, and log ``eval_tau`` and ``eval_mean_accepted``.

    The values go through ``Trainer.log``, so they reach the console, ``state.log_history`` and every
    ``report_to`` integration; those integrations rename the ``eval_`` prefix, so TensorBoard and W&B show
    ``eval/tau`` and ``eval/mean_accepted``. tau counts the verifier's own token and pools all prompts (total new
    tokens / total rounds), like ``DecodeStats.tau``. Runs on the main process only, with the unwrapped model in
    eval mode (restored afterwards), at step 0 as a baseline when ``at_start``. Models sharded across processes
    (ZeRO-3, FSDP) cannot run it there; evaluate their checkpoints instead.

    Both drafter trainers bind it: the trainer's ``acceptance_drafter(model)`` turns the model being trained into
    the drafter the decoding loop runs (a diffusion drafter with its mask and shift, or a conditioned drafter with
    its draft vocabulary), so the loop and the counting are one piece for both.
    """

    def __init__(
        self,
        verifier_model: PreTrainedModel,
        prompts: Sequence[Sequence[int] | torch.Tensor],
        every_n_steps: int,
        max_new_tokens: int = 64,
        decode_config: DecodeConfig | None = None,
        *,
        eos_token_id: int | Sequence[int] | None = None,
        at_start: bool = True,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not prompts:
            raise ValueError("AcceptanceCallback needs at least one held-out prompt")
        self.verifier_model = verifier_model.eval().requires_grad_(False)
        self.prompts = [torch.as_tensor(p, dtype=torch.long) for p in prompts]
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.decode_config = decode_config or DecodeConfig()
        self.eos_token_id = eos_token_id
        self.at_start = at_start
        self.trainer = None

    def bind(self, trainer) -> None:
        """Called by the drafter trainers: the trainer gives ``acceptance_drafter(model)`` and its ``log``."""
        if trainer.is_fsdp_enabled or _zero_stage(trainer) == 3:
            raise ValueError(
                "AcceptanceCallback needs the whole drafter on the main process, but ZeRO-3 / FSDP shard it; set "
                "eval_acceptance_steps: 0 and evaluate saved checkpoints with `diffuspec generate` instead"
            )
        self.trainer = trainer
        self.verifier_model.to(trainer.args.device)

    @torch.no_grad()
    def evaluate(self, model: PreTrainedModel) -> dict[str, float]:
        """Decode every prompt with ``model`` as the drafter; returns eval_tau, eval_mean_accepted, eval_acceptance_s."""
        if self.trainer is None:
            raise RuntimeError("AcceptanceCallback is not bound to a trainer (the drafter trainers bind it)")
        was_training = model.training
        start = time.perf_counter()
        try:
            drafter = self.trainer.acceptance_drafter(model)
            decoder = SpeculativeDecoder(self.verifier_model, drafter, self.decode_config)
            new_tokens = rounds = accepted = 0
            for prompt in self.prompts:
                stats = decoder.generate(prompt, self.max_new_tokens, eos_token_id=self.eos_token_id).stats
                new_tokens += stats.new_tokens
                rounds += stats.rounds
                accepted += sum(stats.accepted)
        finally:
            model.train(was_training)
        return {
            "eval_tau": new_tokens / rounds,
            "eval_mean_accepted": accepted / rounds,
            "eval_acceptance_s": time.perf_counter() - start,
        }

    def _run(self, state, control, model) -> None:
        if not state.is_world_process_zero:
            return
        should_log = control.should_log  # Trainer.log clears it; the Trainer's own loss log for this step follows
        self.trainer.log(self.evaluate(model))
        control.should_log = should_log

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.at_start and state.global_step == 0:
            self._run(state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            self._run(state, control, model)


def _zero_stage(trainer) -> int | None:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return getattr(plugin, "zero_stage", None) if plugin is not None else None


class CollatorEpochCallback(TrainerCallback):
    """Tells the collator the epoch at each epoch start, so its per-example masks change between epochs and are
    reproduced exactly on resume (``state.epoch`` is restored from the checkpoint)."""

    def __init__(self, collator: DrafterCollator) -> None:
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)
