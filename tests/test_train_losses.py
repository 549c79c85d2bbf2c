"""Loss maths against independent computations (loops, F.kl_div, F.cross_entropy, brute-force enumeration)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from diffuspec.drafters.diffusion import DiffusionDrafter
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.training.losses import (
    IGNORE_INDEX,
    block_ce_loss,
    coarsen_to_topk,
    distillation_loss,
    divergence,
    drafter_logprobs,
    expected_streak,
    forward_kl,
    gather_slot_logits,
    generalized_jsd,
    greedy_accepted_length,
    log_acceptance,
    log_expected_streak,
    log_greedy_success,
    masked_diffusion_loss,
    position_decay_weights,
    reverse_kl,
    streak_loss,
    total_variation,
)


def logprobs_pair(seed: int, n: int = 5, c: int = 7, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.log_softmax(scale * torch.randn(n, c, generator=g, dtype=torch.float64), -1)
    t = torch.log_softmax(scale * torch.randn(n, c, generator=g, dtype=torch.float64), -1)
    return s, t


# ---------------------------------------------------------------- slots: the inference convention


@pytest.mark.parametrize("shifted", [True, False])
def test_gather_slot_logits_matches_the_inference_drafter(shifted):
    model = tiny_qwen2(seed=3, vocab_size=40, hidden_size=32, num_layers=1, causal=False, dtype=torch.float64)
    mask, n, k = 39, 6, 4
    drafter = DiffusionDrafter(model, mask_token_id=mask, shifted=shifted)
    x = torch.cat([torch.arange(3, 3 + n), torch.full((k,), mask)])
    expected = drafter._slot_logprobs(x, n, k)  # [k, V], what the speculative loop drafts from
    logits = model(input_ids=x[None]).logits
    index = torch.arange(n, n + k)[None]
    got = drafter_logprobs(gather_slot_logits(logits, index, shifted), mask)[0]
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-5, atol=1e-5)
    assert torch.isinf(got[:, mask]).all()


def test_gather_slot_logits_batch_index():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    index = torch.tensor([[1, 2], [3, 3], [2, 1]])
    rows = torch.tensor([1, 0, 1])
    got = gather_slot_logits(logits, index, shifted=True, batch_index=rows)
    for r in range(3):
        for s in range(2):
            assert torch.equal(got[r, s], logits[rows[r], index[r, s] - 1])


# ---------------------------------------------------------------- cross-entropy objectives


def test_masked_diffusion_loss_matches_llada_loop():
    g = torch.Generator().manual_seed(0)
    B, S, V = 3, 6, 11
    logits = torch.randn(B, S, V, generator=g, dtype=torch.float64)
    labels = torch.full((B, S), IGNORE_INDEX)
    labels[0, [1, 4]] = torch.tensor([3, 7])
    labels[1, 5] = 2
    t = torch.tensor([0.3, 0.9, 0.5], dtype=torch.float64)
    lengths = torch.tensor([5, 4, 6], dtype=torch.float64)
    expected = 0.0
    for b in range(B):  # LLaDA SFT: sum CE / p_mask over masked answer tokens, / answer length, mean over batch
        for s in range(S):
            if labels[b, s] != IGNORE_INDEX:
                expected += F.cross_entropy(logits[b, s][None], labels[b, s][None]).item() / t[b] / lengths[b]
    expected /= B
    got = masked_diffusion_loss(torch.log_softmax(logits, -1), labels, 1 / (t * lengths))
    assert got.item() == pytest.approx(float(expected), rel=1e-10)


def test_block_ce_loss_with_decay_matches_weighted_cross_entropy():
    g = torch.Generator().manual_seed(1)
    B, k, V = 4, 5, 9
    logits = torch.randn(B, k, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, k), generator=g)
    labels[2, 3:] = IGNORE_INDEX
    w = position_decay_weights(k, 2.0).double()
    ce = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    weights = (w.expand(B, k) * (labels != IGNORE_INDEX)).reshape(-1)
    expected = (ce * weights).sum() / weights.sum()
    got = block_ce_loss(torch.log_softmax(logits, -1), labels, w)
    torch.testing.assert_close(got, expected)


def test_position_decay_weights():
    torch.testing.assert_close(position_decay_weights(4, 3.0), torch.exp(-torch.tensor([0.0, 1, 2, 3]) / 3.0))
    assert torch.equal(position_decay_weights(3, None), torch.ones(3))
    with pytest.raises(ValueError, match="gamma"):
        position_decay_weights(3, 0.0)


# ---------------------------------------------------------------- divergences


def test_kl_directions_match_f_kl_div():
    s, t = logprobs_pair(0)
    torch.testing.assert_close(forward_kl(s, t), F.kl_div(s, t, reduction="none", log_target=True).sum(-1))
    torch.testing.assert_close(reverse_kl(s, t), F.kl_div(t, s, reduction="none", log_target=True).sum(-1))


def test_jsd_endpoints_match_f_kl_div_and_interior_matches_probability_space():
    s, t = logprobs_pair(1)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0), F.kl_div(s, t, reduction="none", log_target=True).sum(-1))
    torch.testing.assert_close(generalized_jsd(s, t, 1.0), F.kl_div(t, s, reduction="none", log_target=True).sum(-1))
    p, q = t.exp(), s.exp()
    for beta in (0.1, 0.5, 0.9):
        m = beta * p + (1 - beta) * q
        expected = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
        torch.testing.assert_close(generalized_jsd(s, t, beta), expected)
    # beta = 0.5 is the symmetric JSD, bounded by log 2
    torch.testing.assert_close(generalized_jsd(s, t, 0.5), generalized_jsd(t, s, 0.5))
    assert (generalized_jsd(s, t, 0.5) <= math.log(2) + 1e-12).all()
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, 1.5)


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd", "tv"])
def test_identical_distributions_give_zero(kind):
    s, _ = logprobs_pair(2)
    assert divergence(s, s.clone(), kind).abs().max() < 1e-12


def test_total_variation_is_one_minus_acceptance():
    s, t = logprobs_pair(3)
    expected = 0.5 * (s.exp() - t.exp()).abs().sum(-1)
    torch.testing.assert_close(total_variation(s, t), expected)
    torch.testing.assert_close(log_acceptance(s, t).exp(), 1 - expected)
    torch.testing.assert_close(log_acceptance(s, t).exp(), torch.minimum(s.exp(), t.exp()).sum(-1))


def test_unknown_divergence_raises():
    s, t = logprobs_pair(4)
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence(s, t, "hellinger")


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd", "tv"])
def test_divergences_have_finite_gradients_with_impossible_tokens(kind):
    """The mask column is -inf for both sides (full-vocabulary online teacher): no NaN may leak into gradients."""
    logits = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    s = drafter_logprobs(logits, mask_token_id=5)
    t = drafter_logprobs(torch.randn(3, 8, dtype=torch.float64), mask_token_id=5)
    value = divergence(s, t, kind).sum() + log_acceptance(s, t).sum()
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_distillation_loss_is_weighted_mean_over_valid_slots():
    s, t = logprobs_pair(5, n=6)
    s, t = s.view(2, 3, -1), t.view(2, 3, -1)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    w = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    per = forward_kl(s, t)
    weights = valid * w
    expected = (per * weights).sum() / weights.sum()
    torch.testing.assert_close(distillation_loss(s, t, valid, "forward", slot_weights=w), expected)


# ---------------------------------------------------------------- top-k coarsening


def test_coarsen_to_topk_is_the_partition_projection():
    g = torch.Generator().manual_seed(6)
    V, K = 10, 3
    student = torch.log_softmax(torch.randn(4, V, generator=g, dtype=torch.float64), -1)
    teacher_full = torch.log_softmax(2 * torch.randn(4, V, generator=g, dtype=torch.float64), -1)
    top_lp, top_ids = teacher_full.topk(K, -1)
    s, t = coarsen_to_topk(student, top_ids, top_lp, min_tail=0.0)
    for n in range(4):
        ids = top_ids[n].tolist()
        rest = [v for v in range(V) if v not in ids]
        q = student[n].exp()
        p = teacher_full[n].exp()
        torch.testing.assert_close(s[n].exp(), torch.cat([q[ids], q[rest].sum()[None]]))
        torch.testing.assert_close(t[n].exp(), torch.cat([p[ids], p[rest].sum()[None]]))
    # data processing: the projected divergence never exceeds the full one
    for kind in ("forward", "reverse", "jsd", "tv"):
        assert (divergence(s, t, kind) <= divergence(student, teacher_full, kind) + 1e-12).all()


def test_coarsen_with_every_token_equals_the_full_divergence():
    """Top-k holding the whole vocabulary but the mask token: projection is exact, and the empty tail is 0."""
    g = torch.Generator().manual_seed(7)
    V, mask = 9, 8
    student = drafter_logprobs(torch.randn(3, V, generator=g, dtype=torch.float64), mask)
    teacher = drafter_logprobs(torch.randn(3, V, generator=g, dtype=torch.float64), mask)
    top_lp, top_ids = teacher[:, :mask].topk(V - 1, -1)
    s, t = coarsen_to_topk(student, top_ids, top_lp, mask_token_id=mask)
    assert torch.isinf(s[:, -1]).all() and torch.isinf(t[:, -1]).all()
    for kind in ("forward", "reverse", "jsd", "tv"):
        torch.testing.assert_close(divergence(s, t, kind), divergence(student, teacher, kind))


def test_coarsen_floors_the_teacher_tail_and_drops_mask_mass():
    student = torch.log_softmax(torch.zeros(1, 6, dtype=torch.float64), -1)
    ids = torch.tensor([[0, 1]])
    over_one = torch.log(torch.tensor([[0.7, 0.31]], dtype=torch.float64))  # bf16 rounding can pass 1
    s, t = coarsen_to_topk(student, ids, over_one, min_tail=1e-6)
    assert t.exp().sum().item() == pytest.approx(1.0) and t[0, -1].exp() > 0
    assert torch.isfinite(reverse_kl(s, t)).all()
    _, t = coarsen_to_topk(student, ids, torch.log(torch.tensor([[0.5, 0.3]], dtype=torch.float64)), mask_token_id=1)
    torch.testing.assert_close(t.exp(), torch.tensor([[0.5 / 0.7, 0.0, 0.2 / 0.7]], dtype=torch.float64))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.floats(0.0, 1.0))
def test_divergence_properties(seed, k, beta):
    s, t = logprobs_pair(seed, n=3, c=8, scale=3.0)
    for value in (forward_kl(s, t), reverse_kl(s, t), generalized_jsd(s, t, beta), total_variation(s, t)):
        assert (value >= -1e-12).all()
    assert (total_variation(s, t) <= 1 + 1e-12).all()
    top_lp, top_ids = t.topk(k, -1)
    cs, ct = coarsen_to_topk(s, top_ids, top_lp, min_tail=0.0)
    torch.testing.assert_close(cs.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    assert (total_variation(cs, ct) <= total_variation(s, t) + 1e-12).all()


# ---------------------------------------------------------------- streaks


def brute_force_streak(a: list[float]) -> float:
    """E[leading successes] of independent Bernoulli(a_i), by enumerating every outcome."""
    total = 0.0
    for outcome in itertools.product([0, 1], repeat=len(a)):
        prob = math.prod(ai if o else 1 - ai for ai, o in zip(a, outcome, strict=True))
        lead = next((i for i, o in enumerate(outcome) if not o), len(a))
        total += prob * lead
    return total


def test_expected_streak_matches_enumeration():
    a = torch.tensor([[0.9, 0.7, 0.5, 0.2], [0.99, 0.1, 0.9, 0.9]], dtype=torch.float64)
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    got = expected_streak(a.log(), valid)
    assert got[0].item() == pytest.approx(brute_force_streak(a[0].tolist()))
    assert got[1].item() == pytest.approx(brute_force_streak(a[1, :3].tolist()))  # slot 4 is past the completion
    torch.testing.assert_close(log_expected_streak(a.log(), valid), got.log())


def test_log_expected_streak_is_stable_where_the_product_underflows():
    log_a = torch.full((1, 3), -500.0, dtype=torch.float32)
    valid = torch.ones(1, 3, dtype=torch.bool)
    assert expected_streak(log_a, valid).item() == 0.0  # exp(-500) underflows in float32
    assert log_expected_streak(log_a, valid).item() == pytest.approx(-500.0)


def test_streak_loss_value_and_gradient():
    """loss = 1 - sum E / n; d loss / d log a_i = -(sum_{j>=i} prod_{l<=j} a_l) / n (hand-derived)."""
    a = torch.tensor([[0.8, 0.6, 0.9]], dtype=torch.float64)
    log_a = a.log().requires_grad_(True)
    valid = torch.ones(1, 3, dtype=torch.bool)
    loss = streak_loss(log_a, valid)
    prefix = torch.cumprod(a, 1)[0]
    assert loss.item() == pytest.approx(1 - prefix.sum().item() / 3)
    loss.backward()
    expected = -torch.flip(torch.cumsum(torch.flip(prefix, [0]), 0), [0]) / 3
    torch.testing.assert_close(log_a.grad[0], expected)


def test_log_greedy_success_is_a_smoothed_argmax_indicator():
    logits = torch.tensor([[[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]]], dtype=torch.float64)
    labels = torch.tensor([[0, 2]])
    lp = torch.log_softmax(logits, -1)
    got = log_greedy_success(lp, labels, temperature=0.5)
    expected = F.logsigmoid(torch.tensor([[(2.0 - 1.0) / 0.5, (1.0 - 3.0) / 0.5]], dtype=torch.float64))
    torch.testing.assert_close(got, expected)
    sharp = log_greedy_success(lp, labels, temperature=1e-3).exp()
    torch.testing.assert_close(sharp, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature"):
        log_greedy_success(lp, labels, temperature=0.0)


def test_greedy_accepted_length_counts_leading_argmax_matches():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(5, 6, 4, generator=g)
    labels = logits.argmax(-1).clone()
    labels[1, 2] = (labels[1, 2] + 1) % 4
    labels[3, 0] = (labels[3, 0] + 1) % 4
    labels[4, 4:] = IGNORE_INDEX
    got = greedy_accepted_length(torch.log_softmax(logits, -1), labels)
    assert got.tolist() == [6, 2, 6, 0, 4]
