"""PU baseline losses against values computed by hand."""
import math

import pytest
import torch

from trainers.losses.pu import naive_loss, nnpu_loss, pan_losses, pan_probability_losses, upu_loss, vpu_loss


def sig(z):
    return 1 / (1 + math.exp(-z))


zp = torch.tensor([2.0, -1.0])
zu = torch.tensor([0.5, -3.0])


def test_naive_is_logistic_loss_with_unlabelled_as_negative():
    expected = (-math.log(sig(2)) - math.log(sig(-1))) / 2 + (-math.log(1 - sig(0.5)) - math.log(1 - sig(-3))) / 2
    assert naive_loss(zp, zu).item() == pytest.approx(expected, rel=1e-6)


def test_upu_by_hand():
    prior = 0.3
    pos = prior * (sig(-2) + sig(1)) / 2  # sigmoid loss l(z, +1) = sigmoid(-z)
    neg = (sig(0.5) + sig(-3)) / 2 - prior * (sig(2) + sig(-1)) / 2
    assert upu_loss(zp, zu, prior).item() == pytest.approx(pos + neg, rel=1e-6)


def test_nnpu_takes_the_ascent_step_when_the_negative_risk_is_negative():
    prior = 0.9
    neg = (sig(0.5) + sig(-3)) / 2 - prior * (sig(2) + sig(-1)) / 2
    assert neg < 0  # the case nnPU corrects
    assert nnpu_loss(zp, zu, prior).item() == pytest.approx(-neg, rel=1e-6)
    assert nnpu_loss(zp, zu, prior, gamma=0.5).item() == pytest.approx(-0.5 * neg, rel=1e-6)
    # when the negative risk is fine, nnPU is uPU
    assert nnpu_loss(zp, zu, 0.3).item() == pytest.approx(upu_loss(zp, zu, 0.3).item(), rel=1e-6)


def test_nnpu_is_per_member():
    logits_p = torch.stack([zp, zp])
    logits_u = torch.stack([zu, torch.tensor([5.0, 5.0])])
    per_member = nnpu_loss(logits_p, logits_u, 0.9)
    assert per_member.shape == (2,)
    assert per_member[0].item() == pytest.approx(nnpu_loss(zp, zu, 0.9).item())
    assert per_member[1].item() == pytest.approx(nnpu_loss(zp, logits_u[1], 0.9).item())


def test_vpu_by_hand():
    zmix = torch.tensor([0.0, 1.0])
    log_target = torch.log(torch.tensor([0.7, 0.4]))
    variational = math.log((sig(0.5) + sig(-3)) / 2) - (math.log(sig(2)) + math.log(sig(-1))) / 2
    reg = ((math.log(0.7) - math.log(sig(0))) ** 2 + (math.log(0.4) - math.log(sig(1))) ** 2) / 2
    assert vpu_loss(zp, zu, zmix, log_target, lam=0.5).item() == pytest.approx(variational + 0.5 * reg, rel=1e-6)


def test_pan_by_hand():
    zd_p, zd_u, zc_u = torch.tensor([1.0]), torch.tensor([-0.5]), torch.tensor([2.0])
    lam = 0.7
    game = lam * (2 * sig(-0.5) - 1) * (math.log(1 - sig(2)) - math.log(sig(2)))
    loss_d, loss_c = pan_losses(zd_p, zd_u, zc_u, lam)
    assert loss_d.item() == pytest.approx(-(math.log(sig(1)) + math.log(1 - sig(-0.5)) + game), rel=1e-6)
    assert loss_c.item() == pytest.approx(game, rel=1e-6)
    # the probability form used for the Taylor family is the same game
    pd, pc = pan_probability_losses(*(torch.tensor(sig(v), dtype=torch.float64) for v in (1.0, -0.5, 0.0, 2.0)), lam=lam)
    assert pd.item() == pytest.approx(loss_d.item(), rel=1e-5)
    assert pc.item() == pytest.approx(loss_c.item(), rel=1e-5)
