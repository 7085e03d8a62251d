"""Hand-made PU losses written in the Taylor family's four probabilities, to seed a search.

``taylor_point(name, order)`` expands one of them with :meth:`TaylorLoss.from_function`, so a
search can start from (and be compared with) the losses people already use.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch

from trainers.errors import UsageError

from trainers.losses.pu import pan_probability_losses
from trainers.losses.taylor import TaylorLoss

EPS = 1e-6


def _log(x):
    return torch.log(x.clamp_min(EPS))


def naive_probability_losses(d_p, d_u, c_p, c_u):
    """Both players classify labelled (1) against unlabelled (0) with the logistic loss."""
    return -_log(d_p) - _log(1 - d_u), -_log(c_p) - _log(1 - c_u)


def upu_probability_losses(d_p, d_u, c_p, c_u, prior: float = 0.5):
    """uPU with the sigmoid loss is linear in probabilities: pi(1 - c_p) + c_u - pi c_p.

    nnPU shares this point: its max(0, .) correction is not a polynomial.
    """
    return d_u - 2 * prior * d_p, c_u - 2 * prior * c_p


SEED_FUNCTIONS: dict[str, Callable] = {
    "pan": pan_probability_losses,
    "naive": naive_probability_losses,
    "upu": upu_probability_losses,
    "nnpu": upu_probability_losses,
}
NEEDS_PRIOR = ("upu", "nnpu")


def taylor_point(
    name: str, order: int, center: Sequence[float] = (0.5, 0.5, 0.5, 0.5), prior: float = 0.5
) -> TaylorLoss:
    if name not in SEED_FUNCTIONS:
        raise UsageError(f"no Taylor seed for {name!r}; choose from {sorted(SEED_FUNCTIONS)}")
    f = SEED_FUNCTIONS[name]
    if name in NEEDS_PRIOR:
        f = partial(f, prior=prior)
    return TaylorLoss.from_function(f, order=order, center=center, name=f"{name}-taylor{order}")
