"""The cost model against hand-computed cases."""

import pytest

from diffuspec.evaluation.costmodel import (
    RoundCosts,
    best_draft_length,
    conditional_from_survival,
    expected_tokens_per_round,
    geometric_rates,
    interpolate,
    measured_profile,
    predict,
    speedup_bound,
    survival_from_histogram,
    survival_from_rates,
)


def test_histogram_to_survival_and_rates():
    # 10 rounds of k = 3: accepted 0 (4x), 1 (3x), 2 (2x), 3 (1x).
    survival = survival_from_histogram([4, 3, 2, 1])
    assert survival == pytest.approx([0.6, 0.3, 0.1])
    assert conditional_from_survival(survival) == pytest.approx([0.6, 0.5, 1 / 3])
    # Expected accepted = sum of survival = (0*4 + 1*3 + 2*2 + 3*1) / 10 = 1.0, so tau = 2.0.
    assert expected_tokens_per_round(conditional_from_survival(survival), 3) == pytest.approx(2.0)
    assert conditional_from_survival([0.5, 0.0, 0.0]) == [0.5, 0.0, 0.0]


def test_expected_tokens_per_round():
    assert expected_tokens_per_round([0.5, 0.5], 2) == pytest.approx(1.75)  # 1 + 0.5 + 0.25
    assert expected_tokens_per_round(geometric_rates(1.0, 4), 4) == 5.0  # all accepted: k + bonus
    assert expected_tokens_per_round([0.9], 0) == 1.0  # plain decoding
    assert survival_from_rates([0.8, 0.5]) == pytest.approx([0.8, 0.4])
    with pytest.raises(ValueError, match="covers 2 positions"):
        expected_tokens_per_round([0.5, 0.5], 3)


def test_interpolate():
    table = {1: 1.0, 5: 3.0, 9: 3.0}
    assert interpolate(table, 5) == 3.0
    assert interpolate(table, 3) == pytest.approx(2.0)
    assert interpolate(table, 7) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="outside the measured sizes"):
        interpolate(table, 10)


def test_predict_by_hand():
    # Draft 2 ms, search 1 ms, verify of 3 tokens 5 ms, AR step 4 ms; rates [0.5, 0.5] at k = 2.
    costs = RoundCosts(ar_step=0.004, verify={1: 0.004, 3: 0.005}, draft={2: 0.002}, search={2: 0.001})
    p = predict(costs, [0.5, 0.5], 2)
    assert p.tokens_per_round == pytest.approx(1.75)
    assert p.round_time_s == pytest.approx(0.008)
    assert p.tokens_per_s == pytest.approx(1.75 / 0.008)  # 218.75
    assert p.ar_tokens_per_s == pytest.approx(250.0)
    assert p.speedup == pytest.approx(0.875)
    # Loop overhead lowers it: 2 ms more per round -> 1.75 / 0.010 / 250 = 0.7.
    slow = RoundCosts(ar_step=0.004, verify={3: 0.005}, draft={2: 0.002}, search={2: 0.001}, other=0.002)
    assert predict(slow, [0.5, 0.5], 2).speedup == pytest.approx(0.7)


def test_best_draft_length_trades_acceptance_for_cost():
    # Verify is flat (memory bound), drafting costs 1 ms per token, AR step 10 ms, alpha 0.8.
    costs = RoundCosts(
        ar_step=0.010, verify={m: 0.010 for m in range(1, 10)}, draft={k: 0.001 * k for k in range(1, 9)}
    )
    rates = geometric_rates(0.8, 8)
    by_hand = {k: (1 + sum(0.8**i for i in range(1, k + 1))) * 0.010 / (0.010 + 0.001 * k) for k in range(1, 9)}
    best = best_draft_length(costs, rates, list(range(1, 9)))
    assert best.k == max(by_hand, key=by_hand.get)
    assert best.speedup == pytest.approx(max(by_hand.values()))


def test_speedup_bound():
    assert speedup_bound(tau=4.0, ar_step_s=0.015, round_time_s=0.020) == pytest.approx(3.0)
    assert speedup_bound(tau=1.0, ar_step_s=0.01, round_time_s=0.01) == 1.0  # plain decoding bounds itself
    with pytest.raises(ValueError, match=">= 1"):
        speedup_bound(tau=0.5, ar_step_s=0.01, round_time_s=0.01)


def test_measured_profile():
    # Round 1 verified 3 and accepted 2; round 2 verified 2 and accepted 0; round 3 verified 1 and accepted 1.
    rates = measured_profile([2, 0, 1], [3, 2, 1])
    # Position 1: tried by all 3 rounds, passed by 2. Position 2: tried by round 1 only (round 2 failed at 1,
    # round 3 had no slot 2) and passed. Position 3: tried by round 1, failed.
    assert rates == pytest.approx([2 / 3, 1.0, 0.0])
    assert measured_profile([], []) == []
