"""Quickstart stage: a feature-conditioned (DFlash-style) drafter trained against the quickstart verifier."""

from __future__ import annotations

from pathlib import Path

from .config import QuickstartConfig

BLOCK_SIZE = 12  # the ADL k_max of the tiny evaluation (stages.ADL_TINY): every draft length it asks for fits
LEARNING_RATE = 3e-3
DECAY_GAMMA = 4.0  # DFlash's position decay, scaled to the short block: later slots are rarely reached
ANCHORS = 8  # blocks per sequence: the verifier's features of a batch serve several blocks for one pass
KL_WEIGHT = 1.0  # forward KL to the verifier's own distributions (its logits come with the features)
RECIPE = {"learning_rate": LEARNING_RATE, "anchors_per_sequence": ANCHORS, "decay_gamma": DECAY_GAMMA,
          "kl_weight": KL_WEIGHT}  # fmt: skip


def build_drafter_conditioned(config: QuickstartConfig, out: Path, inputs: dict[str, Path]) -> None:
    """A conditioned drafter on the alignment data; it borrows the verifier's embedding and LM head,
    so its width is the verifier's, and is saved in ``out / "model"`` (load: ``ConditionedDrafter.from_pretrained``)."""
    from ..training.run import train_conditioned_drafter

    train_conditioned_drafter(
        inputs["verifier"],
        inputs["data"] / "dataset",
        out / "model",
        num_layers=config.conditioned_layers,
        block_size=BLOCK_SIZE,
        max_steps=config.conditioned_steps,
        batch_size=config.batch_size,
        seed=config.seed,
        **RECIPE,
    )
