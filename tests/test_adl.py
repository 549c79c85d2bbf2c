import pytest

from diffuspec import ADLConfig
from diffuspec.decoding.adl import AdaptiveDraftLength, FixedDraftLength


def test_paper_controller_follows_equation_11():
    adl = AdaptiveDraftLength(ADLConfig())
    assert adl.k == 30  # k_1 = k_max
    # G_1 = 0.5 * 30 = 15, A_1 = 0.5 * 30 = 15 -> A >= G: floor(15) + 10 = 25
    assert adl.update(30, 30) == 25
    # G_2 = 0.5 * 15 + 0.5 * 25 = 20, A_2 = 0.5 * 15 + 0.5 * 3 = 9 -> no bonus: 20
    assert adl.update(25, 3) == 20
    # G_3 = 0.5 * 20 + 0.5 * 5 = 12.5 -> clipped up to k_min = 20
    assert adl.update(5, 5) == 20
    assert (adl.gen_ema, adl.acc_ema) == (12.5, 7.0)


def test_floor_not_ceiling():
    adl = AdaptiveDraftLength(ADLConfig(k_min=1, k_max=50, delta=0, rho=0.5))
    assert adl.update(7, 0) == 3  # G = 3.5 -> floor


def test_first_observation_init_and_reset():
    adl = AdaptiveDraftLength(ADLConfig(k_min=1, k_max=40, delta=10, ema_init="first_observation"))
    assert adl.update(12, 12) == 22
    adl.reset()
    assert adl.k == 40 and adl.gen_ema == 0.0


def test_fixed_controller():
    fixed = FixedDraftLength(6)
    assert fixed.update(1, 0) == 6 and fixed.k == 6
    with pytest.raises(ValueError, match="draft length"):
        FixedDraftLength(0)
