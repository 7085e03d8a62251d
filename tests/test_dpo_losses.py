"""Preference losses by hand, the Delta = 0 identity, soft = hard at 0/1, and the preference Taylor family."""
import math

import pytest
import torch

from trainers.losses.preference import (
    PREFERENCE_LOSSES,
    bradley_terry_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    log_ratio_margin,
    preference_loss,
    robust_dpo_loss,
    soft_dpo_loss,
)
from trainers.losses.preference_taylor import PreferenceTaylorLoss, preference_taylor_losses, preference_taylor_point

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
LOG_SIG_1 = math.log(1 / (1 + math.exp(-1)))  # log sigmoid(1)
LOG_SIG_M1 = math.log(1 / (1 + math.exp(1)))  # log sigmoid(-1)


def test_preference_losses_match_values_computed_by_hand():
    assert dpo_loss(T(1.0), T(1.0)).item() == pytest.approx(-LOG_SIG_1)
    assert dpo_loss(T(1.0), T(0.0)).item() == pytest.approx(-LOG_SIG_M1)
    assert dpo_loss(T(0.0), T(1.0)).item() == pytest.approx(math.log(2))
    assert soft_dpo_loss(T(1.0), T(0.3)).item() == pytest.approx(-0.3 * LOG_SIG_1 - 0.7 * LOG_SIG_M1)
    eps = 0.1
    assert robust_dpo_loss(T(1.0), T(1.0), eps).item() == pytest.approx(
        ((1 - eps) * -LOG_SIG_1 - eps * -LOG_SIG_M1) / (1 - 2 * eps))
    assert ipo_loss(T(1.0), T(1.0), beta=0.1).item() == pytest.approx((1 - 5) ** 2)
    assert ipo_loss(T(1.0), T(0.0), beta=0.1).item() == pytest.approx((-1 - 5) ** 2)
    assert hinge_loss(T(0.5), T(1.0)).item() == pytest.approx(0.5)
    assert hinge_loss(T(0.5), T(0.0)).item() == pytest.approx(1.5)
    assert hinge_loss(T(2.0), T(1.0)).item() == 0.0
    assert bradley_terry_loss(T(2.0), T(1.0), T(1.0)).item() == pytest.approx(-LOG_SIG_1)
    # The margin: beta * ((pi_a - ref_a) - (pi_b - ref_b))
    assert log_ratio_margin(T(-3.0), T(-5.0), T(-4.0), T(-4.5)).item() == pytest.approx(1.5)
    assert preference_loss("dpo", T(-3.0), T(-5.0), T(-4.0), T(-4.5), T(1.0), beta=0.5).item() == pytest.approx(
        -math.log(1 / (1 + math.exp(-0.75))))
    assert dpo_loss(T(1.0, -1.0), T(1.0, 1.0), reduction="none").tolist() == pytest.approx([-LOG_SIG_1, -LOG_SIG_M1])


def test_policy_equal_to_reference_gives_delta_zero_for_every_pairwise_loss():
    g = torch.Generator().manual_seed(0)
    logp_a, logp_b = -10 * torch.rand(8, generator=g, dtype=torch.float64), -10 * torch.rand(8, generator=g, dtype=torch.float64)
    p = torch.rand(8, generator=g, dtype=torch.float64)
    assert torch.equal(log_ratio_margin(logp_a, logp_b, logp_a, logp_b), torch.zeros(8, dtype=torch.float64))
    at_zero = {"dpo": math.log(2), "soft": math.log(2), "robust": math.log(2), "ipo": (1 / (2 * 0.1)) ** 2, "hinge": 1.0}
    for name, value in at_zero.items():
        got = preference_loss(name, logp_a, logp_b, logp_a, logp_b, p, beta=0.1, reduction="none")
        assert got.tolist() == pytest.approx([value] * 8), name
    assert set(at_zero) | {"bt"} == set(PREFERENCE_LOSSES)


def test_soft_labels_of_zero_and_one_equal_hard_labels():
    g = torch.Generator().manual_seed(1)
    delta = 3 * torch.randn(64, generator=g, dtype=torch.float64)
    hard = (torch.rand(64, generator=g) < 0.5).to(torch.float64)
    assert torch.allclose(soft_dpo_loss(delta, hard, reduction="none"), dpo_loss(delta, hard, reduction="none"))
    # and a soft label moves the loss between the two hard ones
    assert dpo_loss(T(1.0), T(1.0)) < soft_dpo_loss(T(1.0), T(0.7)) < dpo_loss(T(1.0), T(0.0))


def test_unknown_loss_and_bad_epsilon():
    with pytest.raises(ValueError, match="unknown preference loss"):
        preference_loss("kto", T(0.0), T(0.0), T(0.0), T(0.0), T(1.0), beta=0.1)
    with pytest.raises(ValueError, match="epsilon"):
        robust_dpo_loss(T(0.0), T(1.0), epsilon=0.5)


def test_taylor_family_matches_its_polynomial_and_the_dpo_expansion():
    loss = PreferenceTaylorLoss(3, [1.0, -2.0, 0.5], center=0.3)
    delta, p = T(0.4, -1.2), T(1.0, 0.25)
    f = lambda s: 1.0 * (s - 0.3) - 2.0 * (s - 0.3) ** 2 + 0.5 * (s - 0.3) ** 3  # noqa: E731
    s = torch.sigmoid(delta)
    expected = p * f(s) + (1 - p) * f(1 - s)
    assert loss(delta, p, reduction="none").tolist() == pytest.approx(expected.tolist())
    # -log s around 1/2: f' = -1/a, f''/2 = 1/(2a^2), f'''/6 = -1/(3a^3)
    point = preference_taylor_point("dpo", 3, center=0.5)
    assert point.coefficients == pytest.approx([-2.0, 2.0, -8 / 3])
    # near the centre the expansion tracks DPO itself (both shifted to 0 at s = 1/2)
    small = T(0.05)
    exact = dpo_loss(small, T(1.0)) - math.log(2)
    assert point(small, T(1.0)).item() == pytest.approx(exact.item(), abs=1e-5)
    # the population form: K candidates side by side
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 0.0]], dtype=torch.float64)
    out = preference_taylor_losses(w, T(0.3, 0.5), delta, p)
    assert out.shape == (2, 2) and out[0].tolist() == pytest.approx(expected.tolist())


def test_taylor_json_round_trip_and_errors(tmp_path):
    loss = PreferenceTaylorLoss(2, [-1.5, 0.25], 0.4, name="mine")
    loss.save(tmp_path / "l.json")
    back = PreferenceTaylorLoss.load(tmp_path / "l.json")
    assert back == loss
    (tmp_path / "bad.json").write_text('{"family": "taylor", "order": 2}')
    with pytest.raises(ValueError, match="not a preference Taylor loss"):
        PreferenceTaylorLoss.load(tmp_path / "bad.json")
    (tmp_path / "high.json").write_text('{"family": "preference-taylor", "order": 2, "coefficients": {"s^3": 1}}')
    with pytest.raises(ValueError, match="not in the order-2 family"):
        PreferenceTaylorLoss.load(tmp_path / "high.json")
    with pytest.raises(ValueError, match="finite"):
        PreferenceTaylorLoss(1, [float("nan")])


def test_every_seed_loss_expands_at_every_order():
    from trainers.losses.preference_taylor import MAX_ORDER, SEED_FUNCTIONS

    for name in SEED_FUNCTIONS:
        for order in range(1, MAX_ORDER + 1):
            point = preference_taylor_point(name, order)
            assert len(point.coefficients) == order and point.coefficients[0] < 0, (name, order)  # all reward a higher s
