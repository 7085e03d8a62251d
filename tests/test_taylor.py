"""The Taylor loss family: layout, exact polynomials, from_function, JSON and formula."""
import math

import pytest
import torch

from trainers.errors import DataError

from trainers.losses.pu import pan_probability_losses
from trainers.losses.taylor import (
    TaylorLoss,
    coefficient_names,
    exponents,
    num_coefficients,
    parse_term,
    taylor_player_losses,
    term_name,
)


def test_layout_drops_constants_and_terms_the_player_cannot_move():
    # all monomials of degree 1..k in 4 variables, minus those in the other player's two variables only
    for k in range(1, 5):
        total = math.comb(4 + k, k) - 1
        other_only = math.comb(2 + k, k) - 1
        assert len(exponents(k, "discriminator")) == total - other_only
        assert num_coefficients(k) == 2 * (total - other_only)
    names = coefficient_names(2)
    assert "D:d_p^2" in names and "D:d_u*c_u" in names and "C:c_p*c_u" in names
    assert "D:c_u^2" not in names and "C:d_p" not in names
    assert all(parse_term(term_name(e)) == e for e in exponents(3, "selector"))
    with pytest.raises(ValueError):
        exponents(5, "selector")
    with pytest.raises(ValueError):
        parse_term("x_p^2")


def test_a_polynomial_is_reproduced_exactly():
    center = (0.5, 0.4, 0.5, 0.6)
    spec = {
        "family": "taylor",
        "order": 3,
        "center": dict(zip(("d_p", "d_u", "c_p", "c_u"), center)),
        "discriminator": {"d_p": -2.0, "d_u^2*c_u": 1.5, "d_p*c_p": 0.25},
        "selector": {"c_u": 3.0, "d_u*c_p^2": -0.5},
    }
    loss = TaylorLoss.from_dict(spec)
    v = torch.tensor([[0.9, 0.2, 0.7, 0.1], [0.3, 0.8, 0.4, 0.95]], dtype=torch.float64)
    d_p, d_u, c_p, c_u = v.T
    a = center
    want_d = (-2 * (d_p - a[0]) + 1.5 * (d_u - a[1]) ** 2 * (c_u - a[3]) + 0.25 * (d_p - a[0]) * (c_p - a[2])).mean()
    want_c = (3 * (c_u - a[3]) - 0.5 * (d_u - a[1]) * (c_p - a[2]) ** 2).mean()
    got_d, got_c = loss(d_p, d_u, c_p, c_u)
    assert got_d.item() == pytest.approx(want_d.item(), abs=1e-12)
    assert got_c.item() == pytest.approx(want_c.item(), abs=1e-12)
    # and from_function recovers the coefficients of a polynomial exactly
    f = lambda dp, du, cp, cu: (  # noqa: E731
        7.0 - 2 * (dp - a[0]) + 1.5 * (du - a[1]) ** 2 * (cu - a[3]) + 0.25 * (dp - a[0]) * (cp - a[2]) + (cu - a[3]) ** 2,
        3 * (cu - a[3]) - 0.5 * (du - a[1]) * (cp - a[2]) ** 2 + dp,
    )
    recovered = TaylorLoss.from_function(f, order=3, center=center)
    assert recovered.coefficients == pytest.approx(loss.coefficients, abs=1e-10)


def test_population_evaluates_each_member_with_its_own_coefficients():
    k, b = 3, 5
    g = torch.Generator().manual_seed(0)
    w = torch.randn(k, num_coefficients(2), generator=g, dtype=torch.float64)
    a = torch.rand(k, 4, generator=g, dtype=torch.float64)
    q = torch.rand(4, k, b, generator=g, dtype=torch.float64)
    loss_d, loss_c = taylor_player_losses(w, a, 2, *q)
    for i in range(k):
        single = TaylorLoss(2, w[i].tolist(), a[i].tolist())
        d, c = single(*(t[i] for t in q))
        assert loss_d[i].item() == pytest.approx(d.item(), abs=1e-12)
        assert loss_c[i].item() == pytest.approx(c.item(), abs=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_from_function_pan_matches_value_and_gradient_at_the_center(order):
    center = (0.6, 0.4, 0.5, 0.55)
    pan = TaylorLoss.from_function(pan_probability_losses, order=order, center=center, name="pan")
    a = torch.tensor(center, dtype=torch.float64, requires_grad=True)
    want = pan_probability_losses(*a)
    x = torch.tensor(center, dtype=torch.float64, requires_grad=True)
    got = pan(*(t.reshape(1) for t in x))
    for player in range(2):
        # value: the family drops the constant, so at the centre the polynomial is 0 = f(a) - f(a)
        assert got[player].item() == pytest.approx(0.0, abs=1e-12)
        (g_want,) = torch.autograd.grad(want[player], a, retain_graph=True)
        (g_got,) = torch.autograd.grad(got[player], x, retain_graph=True)
        own = [0, 1] if player == 0 else [2, 3]  # the player's own variables keep every term
        assert g_got[own].tolist() == pytest.approx(g_want[own].tolist(), rel=1e-9)
    # Near the centre the expansion tracks PAN up to the dropped constant, closer with higher order.
    # Only the player's own variables move: terms in the other player's variables alone are not in
    # its family, and they vanish when those variables sit at the centre.
    base = torch.tensor(center, dtype=torch.float64)
    for player, h in ((0, [0.03, -0.02, 0.0, 0.0]), (1, [0.0, 0.0, 0.01, 0.02])):
        point = base + torch.tensor(h, dtype=torch.float64)
        value = pan(*(t.reshape(1) for t in point))[player].item()
        exact = (pan_probability_losses(*point)[player] - pan_probability_losses(*base)[player]).item()
        assert abs(value - exact) < 40 * 0.05 ** (order + 1)


def test_from_function_drops_what_the_player_cannot_move():
    # L_D = c_u^2 + d_p: the c_u^2 term cannot move D and is not in its family
    loss = TaylorLoss.from_function(lambda dp, du, cp, cu: (cu**2 + dp, cu), order=2, center=(0.5,) * 4)
    assert loss.player_terms("discriminator")["d_p"] == pytest.approx(1.0)
    assert "c_u^2" not in loss.player_terms("discriminator")
    assert loss.player_terms("selector")["c_u"] == pytest.approx(1.0)


def test_json_round_trip_and_formula(tmp_path):
    loss = TaylorLoss.from_function(pan_probability_losses, order=2, name="pan-taylor")
    path = tmp_path / "loss.json"
    loss.save(path)
    again = TaylorLoss.load(path)
    assert again.coefficients == pytest.approx(loss.coefficients)
    assert again.center == loss.center and again.name == "pan-taylor"
    text = loss.formula()
    assert text.startswith("L_D = ") and "\nL_C = " in text and "(d_p-0.5)" in text


def test_bad_loss_files_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not a loss file: invalid JSON"):
        TaylorLoss.load(bad)
    bad.write_text('{"family": "taylor", "order": 2, "selector": {"d_p": 1.0}}')
    with pytest.raises(ValueError, match="not in the order-2 family"):
        TaylorLoss.load(bad)
    bad.write_text('{"family": "taylor", "order": 2, "selector": {"c_u^3": 1.0}}')
    with pytest.raises(ValueError, match="not in the order-2 family"):
        TaylorLoss.load(bad)
    with pytest.raises(ValueError, match="finite"):
        TaylorLoss(1, [float("nan")] * num_coefficients(1))
