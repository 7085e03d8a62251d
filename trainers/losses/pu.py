"""PU baseline losses as pure tensor functions.

Every function takes classifier *logits* whose last dimension is the batch and whose leading
dimensions (if any) index population members, and returns one loss per member (the batch
dimension reduced). Logits, not probabilities, so log-sigmoids stay finite.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=-1)


def naive_loss(logit_p: torch.Tensor, logit_u: torch.Tensor) -> torch.Tensor:
    """Unlabelled-as-negative logistic loss: -log C(x_p) - log(1 - C(x_u)).

    The oracle is the same loss with the true positives and the true negatives.
    """
    return _mean(F.softplus(-logit_p)) + _mean(F.softplus(logit_u))


def _sigmoid_loss(logit: torch.Tensor, y: int) -> torch.Tensor:
    """The sigmoid surrogate of Kiryo et al.: l(z, y) = sigmoid(-y z)."""
    return torch.sigmoid(-y * logit)


def upu_risks(logit_p: torch.Tensor, logit_u: torch.Tensor, prior: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive risk, negative risk) of the unbiased PU estimator (du Plessis et al.)."""
    positive = prior * _mean(_sigmoid_loss(logit_p, +1))
    negative = _mean(_sigmoid_loss(logit_u, -1)) - prior * _mean(_sigmoid_loss(logit_p, -1))
    return positive, negative


def upu_loss(logit_p: torch.Tensor, logit_u: torch.Tensor, prior: float) -> torch.Tensor:
    positive, negative = upu_risks(logit_p, logit_u, prior)
    return positive + negative


def nnpu_loss(
    logit_p: torch.Tensor, logit_u: torch.Tensor, prior: float, beta: float = 0.0, gamma: float = 1.0
) -> torch.Tensor:
    """The objective to *minimise* for non-negative PU (Kiryo et al. 2017, Algorithm 1).

    When the negative risk falls below -beta the estimator is overfitting; the paper then
    takes a gradient step *up* the negative risk, scaled by gamma, instead of down the
    total risk. Minimising ``-gamma * negative`` is that ascent step.
    """
    positive, negative = upu_risks(logit_p, logit_u, prior)
    return torch.where(negative < -beta, -gamma * negative, positive + negative)


def vpu_loss(
    logit_p: torch.Tensor,
    logit_u: torch.Tensor,
    logit_mix: torch.Tensor,
    log_target_mix: torch.Tensor,
    lam: float = 0.03,
) -> torch.Tensor:
    """Variational PU (Chen et al. 2020) with its MixUp consistency term.

    variational part: log E_u[Phi(x)] - E_p[log Phi(x)];
    regulariser: E[(log target - log Phi(x_mix))^2], where x_mix = mu x_p + (1 - mu) x_u and
    log target = log(mu + (1 - mu) Phi(x_u)) is computed by the caller (no gradient).
    """
    log_phi_u = F.logsigmoid(logit_u)
    log_phi_p = F.logsigmoid(logit_p)
    variational = torch.logsumexp(log_phi_u, dim=-1) - math.log(logit_u.shape[-1]) - _mean(log_phi_p)
    regulariser = _mean((log_target_mix - F.logsigmoid(logit_mix)) ** 2)
    return variational + lam * regulariser


def pan_losses(
    logit_d_p: torch.Tensor, logit_d_u: torch.Tensor, logit_c_u: torch.Tensor, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """PAN's KL-based game (Hu et al. 2021) as (L_D, L_C), both to minimise.

    D maximises  sum_P log D(x_p) + sum_U log(1 - D(x_u)) + lam sum_U (2 D(x_u) - 1)[log(1 - C(x_u)) - log C(x_u)];
    C minimises the lam term. With logits, log(1 - C) - log C is exactly -logit_c.
    """
    game = lam * (2 * torch.sigmoid(logit_d_u) - 1) * (-logit_c_u)
    loss_d = -(_mean(F.logsigmoid(logit_d_p)) + _mean(F.logsigmoid(-logit_d_u)) + _mean(game))
    loss_c = _mean(game)
    return loss_d, loss_c


def pan_probability_losses(d_p, d_u, c_p, c_u, lam: float = 1.0, eps: float = 1e-6):
    """PAN's game written in the four probabilities of the Taylor family, one pair at a time.

    Used to place PAN inside the family: ``TaylorLoss.from_function(pan_probability_losses, ...)``.
    ``c_p`` does not appear in PAN; it is an argument so the signature is the family's.
    """
    c_u = c_u.clamp(eps, 1 - eps)
    game = lam * (2 * d_u - 1) * (torch.log(1 - c_u) - torch.log(c_u))
    loss_d = -(torch.log(d_p.clamp_min(eps)) + torch.log((1 - d_u).clamp_min(eps)) + game)
    return loss_d, game
