"""A per-round cost model for speculative decoding: what speedup do these kernels and this acceptance allow?

One round drafts k tokens, searches a path, and verifies ``[pending] + path`` (k + 1 tokens) in one verifier
pass; it appends the accepted draft tokens plus the verifier's own token. Plain decoding appends one token per
verifier pass of block size 1. So, per round,

    E[tokens]  = 1 + sum_{i=1..k} s_i,        s_i = P(first i draft tokens all accepted) = prod_{j<=i} a_j
    round time = T_draft(k) + T_search(k) + T_verify(k + 1) + T_other
    speedup    = (E[tokens] / round time) / (1 / T_ar_step)

``a_j`` is the acceptance rate of position j given that positions 1..j-1 were accepted (the per-position rate
the harness measures). Everything here is a pure function of measured numbers; nothing is assumed about the
hardware. With ``T_other = 0`` the speedup is an upper bound for a loop whose only costs are its model passes and
its search; the harness reports the measured speedup as a fraction of that bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def survival_from_histogram(histogram: Sequence[int]) -> list[float]:
    """``s_i = P(accepted >= i)`` for i = 1..len(histogram) - 1, from counts of accepted draft lengths.

    ``histogram[j]`` is the number of rounds that accepted exactly j draft tokens. Only exact for rounds that
    all drafted at least ``len(histogram) - 1`` tokens (fixed k); with variable k prefer measured per-position
    rates, because a short draft looks like a rejection here.
    """
    total = sum(histogram)
    if total <= 0:
        raise ValueError("the histogram of accepted lengths is empty")
    if any(c < 0 for c in histogram):
        raise ValueError(f"histogram counts must be >= 0, got {list(histogram)}")
    survival, at_least = [], total
    for count in histogram[:-1]:
        at_least -= count
        survival.append(at_least / total)
    return survival


def conditional_from_survival(survival: Sequence[float]) -> list[float]:
    """Per-position acceptance rates ``a_i = s_i / s_{i-1}`` (``s_0 = 1``); 0 after the survival reaches 0."""
    rates, previous = [], 1.0
    for s in survival:
        rates.append(s / previous if previous > 0 else 0.0)
        previous = s
    return rates


def survival_from_rates(rates: Sequence[float]) -> list[float]:
    """``s_i = prod_{j<=i} a_j``: the chance that the first i draft tokens are all accepted."""
    survival, s = [], 1.0
    for a in rates:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"acceptance rates must be in [0, 1], got {a}")
        s *= a
        survival.append(s)
    return survival


def geometric_rates(alpha: float, k: int) -> list[float]:
    """The textbook profile: every position accepted with the same probability ``alpha`` (i.i.d. tokens)."""
    if not 0.0 <= alpha <= 1.0 or k < 0:
        raise ValueError(f"need alpha in [0, 1] and k >= 0, got alpha={alpha}, k={k}")
    return [alpha] * k


def expected_tokens_per_round(rates: Sequence[float], k: int) -> float:
    """``1 + sum_{i<=k} s_i``: accepted draft tokens plus the verifier's own token (tau, bonus counted)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > len(rates):
        raise ValueError(f"the acceptance profile covers {len(rates)} positions, fewer than k = {k}")
    return 1.0 + sum(survival_from_rates(rates[:k]))


def interpolate(table: Mapping[int, float], x: int) -> float:
    """Linear interpolation in a measured ``{size: seconds}`` table; a size outside the measured range fails
    rather than being extrapolated."""
    if x in table:
        return float(table[x])
    keys = sorted(table)
    if not keys or x < keys[0] or x > keys[-1]:
        raise ValueError(f"size {x} is outside the measured sizes {keys}")
    hi = next(i for i, key in enumerate(keys) if key > x)
    x0, x1 = keys[hi - 1], keys[hi]
    w = (x - x0) / (x1 - x0)
    return (1.0 - w) * float(table[x0]) + w * float(table[x1])


@dataclass
class RoundCosts:
    """Measured costs, in seconds. ``verify`` is keyed by block size (tokens fed: pending + path), ``draft`` and
    ``search`` by draft length k; a plain decoding step is ``ar_step`` (a verify pass of block size 1)."""

    ar_step: float
    verify: Mapping[int, float]
    draft: Mapping[int, float]
    search: Mapping[int, float] | None = None  # None: no path search (raw argmax, prompt lookup, AR drafter)
    other: float = 0.0  # per-round loop overhead (acceptance, bookkeeping); 0 gives the bound

    def round_time(self, k: int) -> float:
        search = interpolate(self.search, k) if self.search else 0.0
        return interpolate(self.draft, k) + search + interpolate(self.verify, k + 1) + self.other


@dataclass
class Prediction:
    k: int
    tokens_per_round: float  # tau, the verifier's own token included
    round_time_s: float
    tokens_per_s: float
    ar_tokens_per_s: float
    speedup: float


def predict(costs: RoundCosts, rates: Sequence[float], k: int) -> Prediction:
    """Tokens/s and speedup over plain decoding of a fixed draft length k (see the module docstring)."""
    if costs.ar_step <= 0:
        raise ValueError(f"ar_step must be > 0 seconds, got {costs.ar_step}")
    tokens = expected_tokens_per_round(rates, k)
    round_time = costs.round_time(k)
    tokens_per_s = tokens / round_time
    ar_tokens_per_s = 1.0 / costs.ar_step
    return Prediction(k, tokens, round_time, tokens_per_s, ar_tokens_per_s, tokens_per_s / ar_tokens_per_s)


def best_draft_length(costs: RoundCosts, rates: Sequence[float], ks: Sequence[int]) -> Prediction:
    """The fixed k among ``ks`` with the highest predicted speedup: longer drafts only pay while
    ``s_k * T_ar_step`` exceeds the extra draft and verify time they cost."""
    if not ks:
        raise ValueError("ks is empty")
    return max((predict(costs, rates, k) for k in ks), key=lambda p: p.speedup)


def speedup_bound(tau: float, ar_step_s: float, round_time_s: float) -> float:
    """``tau * T_ar_step / T_round``: the speedup of a loop whose rounds cost ``round_time_s`` and append ``tau``
    tokens each, against plain steps of ``ar_step_s``. With measured mean round costs that exclude loop overhead
    this is the bound the harness compares the measured speedup with."""
    if ar_step_s <= 0 or round_time_s <= 0:
        raise ValueError(f"times must be > 0, got ar_step_s={ar_step_s}, round_time_s={round_time_s}")
    if tau < 1.0:
        raise ValueError(f"tau counts the verifier's own token, so it is >= 1, got {tau}")
    return tau * ar_step_s / round_time_s


def measured_profile(accepted: Sequence[int], path_lengths: Sequence[int]) -> list[float]:
    """Per-position acceptance rates from per-round records: position i's rate is the share of rounds that
    accepted it among rounds that verified at least i tokens and accepted the first i - 1. For token trees pass
    each round's depth (its deepest position), not its node count."""
    if len(accepted) != len(path_lengths):
        raise ValueError(f"{len(accepted)} accepted counts for {len(path_lengths)} path lengths")
    longest = max(path_lengths, default=0)
    rates = []
    for i in range(1, longest + 1):
        tried = sum(1 for a, m in zip(accepted, path_lengths, strict=True) if m >= i and a >= i - 1)
        passed = sum(1 for a in accepted if a >= i)
        rates.append(passed / tried if tried else 0.0)
    return rates
