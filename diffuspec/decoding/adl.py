"""Draft-length controllers.

``AdaptiveDraftLength`` is the paper's controller: exponential moving averages of the EOS-aware generated
length G and the accepted length A, then ``k <- clip(floor(G) + delta * [A >= G], k_min, k_max)``.
``FixedDraftLength`` always answers the same k, so both fit the loop behind the same two calls.
"""

from __future__ import annotations

import math

from .config import ADLConfig


class FixedDraftLength:
    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"draft length must be >= 1, got {k}")
        self.k = k

    def reset(self) -> None:
        pass

    def update(self, generated_len: int, accepted_len: int) -> int:
        return self.k


class AdaptiveDraftLength:
    def __init__(self, config: ADLConfig | None = None) -> None:
        self.config = config or ADLConfig()
        self.reset()

    def reset(self) -> None:
        """A new request starts at k_max with G_0 = A_0 = 0 (the paper's Algorithm 1)."""
        self.k = self.config.k_max
        self.gen_ema = 0.0
        self.acc_ema = 0.0
        self._observed = False

    def update(self, generated_len: int, accepted_len: int) -> int:
        """Feed one round's L^gen (EOS-aware raw draft length) and L^acc (accepted draft tokens); return next k."""
        if generated_len < 0 or accepted_len < 0:
            raise ValueError(f"lengths must be >= 0, got generated={generated_len}, accepted={accepted_len}")
        cfg = self.config
        if cfg.ema_init == "first_observation" and not self._observed:
            self.gen_ema, self.acc_ema = float(generated_len), float(accepted_len)
        else:
            self.gen_ema = (1 - cfg.rho) * self.gen_ema + cfg.rho * generated_len
            self.acc_ema = (1 - cfg.rho) * self.acc_ema + cfg.rho * accepted_len
        self._observed = True
        bonus = cfg.delta if self.acc_ema >= self.gen_ema else 0
        self.k = min(cfg.k_max, max(cfg.k_min, math.floor(self.gen_ema) + bonus))
        return self.k


def make_controller(adl: ADLConfig | None, draft_length: int) -> AdaptiveDraftLength | FixedDraftLength:
    return AdaptiveDraftLength(adl) if adl is not None else FixedDraftLength(draft_length)
