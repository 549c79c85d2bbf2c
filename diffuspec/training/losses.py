"""Drafter training objectives as pure functions.

Notation: ``p`` is the verifier, ``q`` the drafter. Shapes: ``B`` rows, ``S`` scored positions (slots), ``V``
vocabulary, ``C`` categories of a (possibly coarsened) distribution, ``K`` teacher top-k. Every loss computes in
float32 and is reduced explicitly; a position labelled ``IGNORE_INDEX`` is scored by no objective.

The objectives, in the order a drafter meets them:

1. ``masked_diffusion_loss``: LLaDA's masked-diffusion cross-entropy (pretraining / SFT of any diffusion LM).
2. ``block_ce_loss``: cross-entropy on a draft-time block (prefix + k masks, exactly the inference input),
   optionally with DFlash-style position decay ``exp(-(i-1)/gamma)``.
3. ``distillation_loss`` over ``forward_kl`` / ``reverse_kl`` / ``generalized_jsd`` / ``total_variation`` to the
   verifier's distribution, usually given as top-k (``coarsen_to_topk``).
4. ``streak_loss``: causal consistency. A draft is only worth its accepted *prefix*, so the loss is the expected
   accepted streak ``sum_j prod_{i<=j} a_i`` of per-slot success probabilities ``a_i``. Three choices of ``a_i``:
   ``q_i(y_i)`` (likelihood), ``1 - TV(p_i, q_i)`` (speculative-sampling acceptance) and a smoothed
   "argmax is right" probability (greedy acceptance, our objective; see ``log_greedy_success``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Label of a position no objective scores (PyTorch's ``cross_entropy`` default, named so it is never a bare -100).
IGNORE_INDEX = -100

_NEG_INF = float("-inf")


# ---------------------------------------------------------------- reading the drafter's slots


def gather_slot_logits(
    logits: torch.Tensor, index: torch.Tensor, shifted: bool, batch_index: torch.Tensor | None = None
) -> torch.Tensor:
    """logits [B, W, V], index [R, S] (positions of the tokens to predict) -> [R, S, V].

    Shifted drafters (Dream) read the token at position ``s`` from output row ``s - 1``; unshifted ones (LLaDA)
    from row ``s``. This is the convention of ``DiffusionDrafter`` at inference, checked
    against it in tests/test_train_losses.py; an autoregressive verifier is "shifted". With ``shifted`` every
    index must be >= 1. ``batch_index`` [R] says which logits row each index row reads (default: R = B, row r).
    """
    rows = index - 1 if shifted else index
    if batch_index is None:
        batch_index = torch.arange(logits.shape[0], device=logits.device)
    return logits[batch_index[:, None], rows]


def drafter_logprobs(slot_logits: torch.Tensor, mask_token_id: int | None) -> torch.Tensor:
    """[..., V] logits -> log-probs (float32 or wider) without the mask token, as the drafter proposes at inference."""
    logits = slot_logits.to(torch.promote_types(slot_logits.dtype, torch.float32))
    if mask_token_id is not None:
        logits = logits.index_fill(-1, torch.tensor([mask_token_id], device=logits.device), _NEG_INF)
    return torch.log_softmax(logits, dim=-1)


def token_logprobs(logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logprobs [..., V], labels [...] -> log q(label) [...]; ignored labels read id 0 (mask them afterwards)."""
    safe = labels.clamp(min=0)
    return logprobs.gather(-1, safe[..., None])[..., 0]


def position_decay_weights(k: int, gamma: float | None, device: torch.device | None = None) -> torch.Tensor:
    """[k] weights ``exp(-(i - 1) / gamma)`` for slots i = 1..k (DFlash's block decay); ``None`` -> all ones."""
    positions = torch.arange(k, dtype=torch.float32, device=device)
    if gamma is None:
        return torch.ones_like(positions)
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0 or None, got {gamma}")
    return torch.exp(-positions / gamma)


# ---------------------------------------------------------------- cross-entropy objectives


def masked_diffusion_loss(logprobs: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
    """LLaDA's masked-diffusion cross-entropy.

    logprobs [B, S, V]; labels [B, S]: the clean token at masked completion positions, ``IGNORE_INDEX`` elsewhere
    (the prompt is never masked); row_weights [B]: ``1 / (t_b * L_b)`` with ``t_b ~ U(eps, 1)`` the row's mask
    ratio (the ELBO's importance weight) and ``L_b`` its completion length (LLaDA's SFT normalisation by answer
    length). Returns ``sum_b w_b * sum_{masked s} -log q(x_s) / B``.
    """
    valid = labels != IGNORE_INDEX
    nll = torch.where(valid, -token_logprobs(logprobs, labels), 0.0)
    return (nll.sum(dim=1) * row_weights).sum() / labels.shape[0]


def block_ce_loss(
    logprobs: torch.Tensor, labels: torch.Tensor, slot_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy on draft-time blocks: logprobs [B, k, V], labels [B, k] (``IGNORE_INDEX`` past the
    completion), slot_weights [k] (e.g. ``position_decay_weights``) -> weighted mean over valid slots."""
    valid = labels != IGNORE_INDEX
    weights = valid.float() if slot_weights is None else valid.float() * slot_weights
    nll = torch.where(valid, -token_logprobs(logprobs, labels), 0.0)
    return (nll * weights).sum() / weights.sum().clamp(min=1e-12)


# ---------------------------------------------------------------- distributions: top-k coarsening and divergences


def coarsen_to_topk(
    student_logprobs: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    mask_token_id: int | None = None,
    min_tail: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project drafter and verifier onto the partition {v_1, ..., v_K, rest} of the vocabulary.

    student_logprobs [N, V]; topk_ids [N, K], topk_logprobs [N, K]: the verifier's K most likely ids and their
    log-probs (not renormalised). Returns (student, teacher) log-probs [N, K + 1], the last column the tail mass.
    Any divergence between the projected pair is a lower bound of the full-vocabulary one (data processing) and
    equals it when the top-k holds every token the drafter can emit. The student's tail is read from its own
    logits (a stable logsumexp over the ids outside the top-k), never as ``1 - sum``. The teacher's tail is
    ``1 - sum(top-k)``, floored at ``min_tail`` (bf16 top-k log-probs can sum past 1, which would make the reverse
    KL infinite), and 0 when the partition's tail holds no token at all. Teacher mass on the mask token, which the
    drafter never proposes, is dropped and the rest renormalised.
    """
    student_top = student_logprobs.gather(-1, topk_ids)
    student_tail = torch.logsumexp(student_logprobs.scatter(-1, topk_ids, _NEG_INF), dim=-1, keepdim=True)

    teacher_top = topk_logprobs.to(student_logprobs.dtype)
    tail_mass = (1.0 - teacher_top.exp().sum(dim=-1, keepdim=True)).clamp(min=min_tail)
    tail_mass = torch.where(torch.isfinite(student_tail), tail_mass, 0.0)  # an empty tail holds no teacher mass
    if mask_token_id is not None:
        teacher_top = teacher_top.masked_fill(topk_ids == mask_token_id, _NEG_INF)
    log_total = torch.log(teacher_top.exp().sum(dim=-1, keepdim=True) + tail_mass)
    teacher = torch.cat([teacher_top, torch.log(tail_mass)], dim=-1) - log_total
    return torch.cat([student_top, student_tail], dim=-1), teacher


def _kl(log_x: torch.Tensor, log_y: torch.Tensor) -> torch.Tensor:
    """KL(x || y) over the last dim from log-probs; 0 log 0 = 0 and no NaN gradient where x = 0."""
    present = torch.isfinite(log_x)
    diff = torch.where(present, log_x - log_y, 0.0)
    return (log_x.exp() * diff).sum(dim=-1)


def forward_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p (log p - log q): log-probs [..., C] -> [...]. Mode-covering (EAGLE's objective);
    equals ``F.kl_div(student, teacher, log_target=True)`` summed over C."""
    return _kl(teacher, student)


def reverse_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = sum_v q (log q - log p): log-probs [..., C] -> [...]. Mode-seeking; GKD's beta = 1."""
    return _kl(student, teacher)


def generalized_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence of GKD / TRL's ``generalized_jsd_loss``: log-probs [..., C] -> [...].

    For 0 < beta < 1: ``beta KL(p || M) + (1 - beta) KL(q || M)`` with ``M = beta p + (1 - beta) q``; beta = 0.5
    is the symmetric JSD (at most log 2). The endpoints are defined as in TRL: beta = 0 is the forward KL(p || q)
    and beta = 1 the reverse KL(q || p). (The mixture form itself tends to 0 at both ends, so the scale of the
    loss changes with beta; compare runs at equal beta.)
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student, teacher)
    if beta == 1.0:
        return reverse_kl(student, teacher)
    # Clamp before mixing: where both are -inf, logaddexp's gradient would be NaN (exp(-1e4) is 0 in float32).
    mixture = torch.logaddexp(teacher.clamp(min=-1e4) + math.log(beta), student.clamp(min=-1e4) + math.log(1 - beta))
    return beta * _kl(teacher, mixture) + (1.0 - beta) * _kl(student, mixture)


def total_variation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = 1/2 sum_v |p - q|: log-probs [..., C] -> [...]. Speculative sampling accepts a token drafted
    from q with probability ``sum_v min(p, q) = 1 - TV`` (DistillSpec), so TV is the per-token acceptance gap."""
    return 0.5 * (student.exp() - teacher.exp()).abs().sum(dim=-1)


DIVERGENCES = {
    "forward": forward_kl,
    "reverse": reverse_kl,
    "tv": total_variation,
}


def divergence(student: torch.Tensor, teacher: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Dispatch ``kind`` in {forward, reverse, jsd, tv}: log-probs [..., C] -> [...]."""
    if kind == "jsd":
        return generalized_jsd(student, teacher, beta)
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; expected one of forward, reverse, jsd, tv")
    return DIVERGENCES[kind](student, teacher)


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    valid: torch.Tensor,
    kind: str,
    beta: float = 0.5,
    slot_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """student / teacher log-probs [B, k, C], valid [B, k], slot_weights [k] -> weighted mean divergence."""
    weights = valid.float() if slot_weights is None else valid.float() * slot_weights
    values = torch.where(valid, divergence(student, teacher, kind, beta), 0.0)
    return (values * weights).sum() / weights.sum().clamp(min=1e-12)


# ---------------------------------------------------------------- causal consistency: accepted streaks


def log_acceptance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """log sum_v min(p, q) = log(1 - TV(p, q)) from log-probs [..., C] -> [...], computed as a logsumexp of
    ``min(log p, log q)`` so it never takes the log of a difference."""
    return torch.logsumexp(torch.minimum(student, teacher), dim=-1)


def log_greedy_success(logprobs: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log sigmoid((z_y - max_{v != y} z_v) / T): a smooth log-probability that the drafter's argmax is ``y``.

    logprobs [..., V] (any logits work: only differences matter), labels [...] -> [...]. Greedy verification
    accepts slot i exactly when the drafted token equals the verifier's argmax y_i, so with a raw argmax draft
    the accepted length is ``sum_j prod_{i<=j} [margin_i > 0]``. Replacing the indicator by this sigmoid makes
    the streak differentiable; T -> 0 recovers the indicator. Ignored labels read id 0 (mask them afterwards).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target = token_logprobs(logprobs, labels)
    safe = labels.clamp(min=0)
    others = logprobs.scatter(-1, safe[..., None], _NEG_INF).amax(dim=-1)
    return F.logsigmoid((target - others) / temperature)


def expected_streak(log_success: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Expected accepted streak per block: log_success [B, k] (log a_i), valid [B, k] -> [B].

    ``E = sum_j prod_{i<=j} a_i``: the expected number of leading slots accepted when each slot succeeds
    independently with probability a_i. Products are cumulative sums of logs, exponentiated once (every term is
    <= 1, so nothing overflows). A slot past the end of the completion ends the streak (a_i = 0).
    """
    log_prefix = torch.cumsum(torch.where(valid, log_success, _NEG_INF), dim=1)  # log prod_{i<=j} a_i
    return log_prefix.exp().sum(dim=1)


def log_expected_streak(log_success: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log E of ``expected_streak``, a logsumexp of the cumulative log-products (no product is ever formed): [B]."""
    log_prefix = torch.cumsum(torch.where(valid, log_success, _NEG_INF), dim=1)
    return torch.logsumexp(log_prefix, dim=1)


def streak_loss(log_success: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``1 - sum_b E_b / sum_b n_b`` in [0, 1]: the fraction of scorable slots *not* in the expected accepted
    prefix (n_b = valid slots of block b). log_success, valid [B, k] -> scalar.

    Slot i's gradient is scaled by the probability that every earlier slot succeeds, so the loss spends the
    model's capacity on the first likely failure of each block and ignores slots that a failure before them
    makes worthless; cross-entropy weighs all slots alike.
    """
    return 1.0 - expected_streak(log_success, valid).sum() / valid.sum().clamp(min=1)


@torch.no_grad()
def greedy_accepted_length(logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Leading slots whose argmax equals the label (what greedy verification of the raw draft accepts):
    logprobs [B, k, V], labels [B, k] -> [B] (a metric, not a loss)."""
    hit = (logprobs.argmax(dim=-1) == labels) & (labels != IGNORE_INDEX)
    return hit.long().cumprod(dim=1).sum(dim=1)
