"""Loss-term logging shared by the drafter trainers.

``LossTermsMixin`` goes before ``transformers.Trainer`` in a trainer's bases. ``compute_loss`` hands it the
detached terms of each training micro-batch (``_accumulate``); the Trainer's next training log gets their mean
since the previous log, averaged across processes, next to its own ``loss``.
"""

from __future__ import annotations

import torch


class LossTermsMixin:
    """Per-term means in the training log (``loss/ce``, ``block/greedy_accepted``, ...)."""

    def _accumulate(self, values: dict[str, torch.Tensor]) -> None:
        sums = self.__dict__.setdefault("_term_sums", {})
        for name, value in values.items():
            value = value.detach().float()
            sums[name] = sums[name] + value if name in sums else value
        self._term_count = getattr(self, "_term_count", 0) + 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The Trainer's training log ("loss") runs on every process, so the mean across processes is safe here.
        if "loss" in logs and getattr(self, "_term_count", 0):
            names = sorted(self._term_sums)
            means = torch.stack([self._term_sums[n] for n in names]) / self._term_count
            if self.accelerator.num_processes > 1:
                means = self.accelerator.reduce(means, reduction="mean")
            logs = {**logs, **{n: round(v, 6) for n, v in zip(names, means.tolist(), strict=True)}}
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)
