"""Acceptance rules: greedy (T = 0) and exact sampling with a point-mass proposal (T > 0).

The CPS path is chosen deterministically from the round's starting prefix, so at slot i the proposal is a
point mass on ``path[i]``. Speculative sampling with ``q = delta_x`` accepts x with probability ``p(x)`` and
on rejection samples from ``p`` with x removed, renormalised. The emitted token then has law ``p``:
``P(x) = p(x)`` and ``P(v) = (1 - p(x)) p(v) / (1 - p(x)) = p(v)`` for ``v != x``.
Temperature, top-k and top-p are applied to the verifier's logits *before* the test, because the
processed distribution is the one we must sample from.
"""

from __future__ import annotations

import torch


def greedy_accept(path: torch.Tensor, logits: torch.Tensor) -> tuple[int, int]:
    """path [m], logits [m+1, V] -> (accepted draft tokens a, the verifier's own next token)."""
    target = logits.argmax(dim=-1)  # [m+1]
    m = path.numel()
    mismatch = torch.nonzero(path != target[:m])
    accepted = int(mismatch[0, 0]) if mismatch.numel() else m
    return accepted, int(target[accepted])


def process_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Verifier logits [..., V] -> probabilities after temperature, top-k and top-p (renormalised, float32)."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p; the best token always stays.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def sample_accept(path: torch.Tensor, probs: torch.Tensor, generator: torch.Generator | None = None) -> tuple[int, int]:
    """path [m], probs [m+1, V] (processed) -> (accepted draft tokens a, the emitted correction or bonus token)."""
    m = path.numel()
    if m:
        p_draft = probs[torch.arange(m), path]  # p~_i(pi_i)
        coins = torch.rand(m, generator=generator, device=probs.device)
        rejected = torch.nonzero(coins >= p_draft)
        if rejected.numel():
            i = int(rejected[0, 0])
            residual = probs[i].clone()
            residual[path[i]] = 0.0  # p~ with the drafted token removed; multinomial renormalises
            return i, int(torch.multinomial(residual, 1, generator=generator))
    return m, int(torch.multinomial(probs[m], 1, generator=generator))
