"""Pairwise preference losses (DPO and its relatives): plain arithmetic on tensors.

Every loss works on one batch of pairs (a, b) with ``p`` = the probability that a is the better
one (hard labels are 0/1; a judge's soft ``p_a`` passes through as is). The model side enters
as log-likelihoods (causal mode) or scores (encoder mode) of a and b under the policy and the
frozen reference:

    h = (policy_a - reference_a) - (policy_b - reference_b),     Delta = beta * h

With the policy equal to the reference, h = Delta = 0 for every pair.

A *hard* loss is one function ``l(Delta)`` of the preferred side's margin; on a pair with label
p it is ``p * l(Delta) + (1 - p) * l(-Delta)`` after rounding p to 0/1 (ties p = 0.5 count as
a preferred: no such labels in hard-labelled data). ``soft`` keeps p as a weight instead.
Every function returns the mean over the batch; ``reduction="none"`` gives one value per pair.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from trainers.errors import UsageError
from trainers.losses.preference_taylor import FAMILY as TAYLOR_FAMILY, PreferenceTaylorLoss
from trainers.zoo import ZOO_PREFIX, zoo_spec

# Reference-free (Bradley-Terry on raw scores) and reference-based names.
PREFERENCE_LOSSES = ("dpo", "soft", "robust", "ipo", "hinge", "bt")


def resolve_preference_loss(spec: str) -> str | PreferenceTaylorLoss:
    """A named loss, a shipped one (``zoo:NAME``), or a searched loss read from its file (a bad
    file fails here, not in a worker)."""
    if spec in PREFERENCE_LOSSES:
        return spec
    if spec.startswith(ZOO_PREFIX):
        return PreferenceTaylorLoss.from_dict(zoo_spec(spec, TAYLOR_FAMILY))
    if spec.endswith(".json") or Path(spec).exists():
        return PreferenceTaylorLoss.load(spec)
    raise UsageError(f"unknown loss {spec!r}: use one of {PREFERENCE_LOSSES}, a preference Taylor .json file or zoo:NAME")


def log_ratio_margin(policy_a, policy_b, reference_a, reference_b) -> torch.Tensor:
    """h = (log pi(a) - log ref(a)) - (log pi(b) - log ref(b)), per pair."""
    return (policy_a - reference_a) - (policy_b - reference_b)


def hard_labels(p: torch.Tensor) -> torch.Tensor:
    """1.0 where a is preferred (p >= 0.5), else 0.0."""
    return (p >= 0.5).to(p.dtype)


def _oriented(loss_of_margin, margin: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * loss_of_margin(margin) + (1 - weight) * loss_of_margin(-margin)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def dpo_loss(delta: torch.Tensor, p: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """DPO: -log sigmoid(Delta) for the preferred side (Rafailov et al. 2023)."""
    return _reduce(_oriented(lambda m: -F.logsigmoid(m), delta, hard_labels(p)), reduction)


def soft_dpo_loss(delta: torch.Tensor, p: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-pair soft labels: -p log sigmoid(Delta) - (1 - p) log sigmoid(-Delta).

    Label smoothing (cDPO) is the special case of one constant p = 1 - eps for every pair; here
    each pair carries the judge's own probability. With p in {0, 1} it equals :func:`dpo_loss`.
    """
    return _reduce(_oriented(lambda m: -F.logsigmoid(m), delta, p), reduction)


def robust_dpo_loss(delta: torch.Tensor, p: torch.Tensor, epsilon: float = 0.1, reduction: str = "mean") -> torch.Tensor:
    """Robust DPO for labels flipped with probability epsilon (Chowdhury et al. 2024): the
    unbiased estimate ((1 - eps) l(Delta) - eps l(-Delta)) / (1 - 2 eps), l = -log sigmoid."""
    if not 0.0 <= epsilon < 0.5:
        raise ValueError(f"robust DPO needs 0 <= epsilon < 0.5, got {epsilon}")

    def flipped(m):
        return ((1 - epsilon) * -F.logsigmoid(m) - epsilon * -F.logsigmoid(-m)) / (1 - 2 * epsilon)

    return _reduce(_oriented(flipped, delta, hard_labels(p)), reduction)


def ipo_loss(h: torch.Tensor, p: torch.Tensor, beta: float, reduction: str = "mean") -> torch.Tensor:
    """IPO (Azar et al. 2023): (h - 1 / (2 beta))^2 on the un-scaled log-ratio margin h,
    beta playing the role of the regularisation tau."""
    target = 1.0 / (2.0 * beta)
    return _reduce(_oriented(lambda m: (m - target) ** 2, h, hard_labels(p)), reduction)


def hinge_loss(delta: torch.Tensor, p: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """SLiC-style hinge: max(0, 1 - Delta) for the preferred side."""
    return _reduce(_oriented(lambda m: torch.relu(1 - m), delta, hard_labels(p)), reduction)


def bradley_terry_loss(score_a: torch.Tensor, score_b: torch.Tensor, p: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Reference-free Bradley-Terry on raw scores, soft labels allowed: the plain reward model."""
    return _reduce(_oriented(lambda m: -F.logsigmoid(m), score_a - score_b, p), reduction)


def preference_loss(
    name: str,
    policy_a: torch.Tensor,
    policy_b: torch.Tensor,
    reference_a: torch.Tensor,
    reference_b: torch.Tensor,
    p: torch.Tensor,
    beta: float,
    epsilon: float = 0.1,
    reduction: str = "mean",
) -> torch.Tensor:
    """One of :data:`PREFERENCE_LOSSES` by name."""
    if name == "bt":
        return bradley_terry_loss(policy_a, policy_b, p, reduction)
    h = log_ratio_margin(policy_a, policy_b, reference_a, reference_b)
    if name == "ipo":
        return ipo_loss(h, p, beta, reduction)
    delta = beta * h
    if name == "dpo":
        return dpo_loss(delta, p, reduction)
    if name == "soft":
        return soft_dpo_loss(delta, p, reduction)
    if name == "robust":
        return robust_dpo_loss(delta, p, epsilon, reduction)
    if name == "hinge":
        return hinge_loss(delta, p, reduction)
    raise ValueError(f"unknown preference loss {name!r}; choose from {PREFERENCE_LOSSES}")


def pair_loss(loss, value_a, value_b, ref_a, ref_b, p, cfg) -> torch.Tensor:
    """``loss``: a name of :data:`PREFERENCE_LOSSES`, or any ``(delta, p) -> loss`` (a
    :class:`PreferenceTaylorLoss`, or a raw search candidate from :func:`taylor_pair_loss`)."""
    if isinstance(loss, str):
        return preference_loss(loss, value_a, value_b, ref_a, ref_b, p, cfg.effective_beta, cfg.robust_epsilon)
    return loss(cfg.effective_beta * log_ratio_margin(value_a, value_b, ref_a, ref_b), p)
