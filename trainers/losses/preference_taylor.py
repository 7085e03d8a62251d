"""The Taylor family of pairwise preference losses, searched by ``lossforge search --task dpo``.

One variable: ``s = sigmoid(Delta)``, the model's probability that the preferred side wins
(Delta = beta * log-ratio margin, as in :mod:`trainers.losses.preference`). A loss is a
polynomial in s around a centre a,

    f(s) = sum_{k=1..order} w_k (s - a)^k,

and on a pair with label p (soft or 0/1) the loss is ``p f(sigmoid(Delta)) + (1 - p) f(sigmoid(-Delta))``.
s lives in (0, 1), so every member of the family is bounded and cannot run away the way a
polynomial in the raw margin would. DPO is ``f(s) = -log s``; its expansion around a is the
natural seed (:func:`preference_taylor_point`). The constant term is dropped (no gradient).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainers.errors import UsageError
from trainers.files import load_object, write_json
from trainers.losses.taylor import check_coefficient

FAMILY = "preference-taylor"
FORMAT_VERSION = 1
MAX_ORDER = 6


def check_order(order: int) -> None:
    if not 1 <= order <= MAX_ORDER:
        raise UsageError(f"preference Taylor order must be between 1 and {MAX_ORDER}, got {order}")


def preference_taylor_losses(
    coefficients: torch.Tensor, center: torch.Tensor, delta: torch.Tensor, p: torch.Tensor
) -> torch.Tensor:
    """Per-pair losses for K candidates: coefficients ``[K, order]``, center ``[K]``,
    delta and p ``[K, B]`` (or ``[B]``, shared) -> ``[K, B]``."""
    order = coefficients.shape[-1]
    check_order(order)

    def f(s):
        h = s - center[:, None]
        powers = torch.stack([h**k for k in range(1, order + 1)], dim=-1)  # [K, B, order]
        return torch.einsum("kbo,ko->kb", powers, coefficients)

    delta = delta.expand(coefficients.shape[0], -1) if delta.dim() == 1 else delta
    return p * f(torch.sigmoid(delta)) + (1 - p) * f(torch.sigmoid(-delta))


@dataclass
class PreferenceTaylorLoss:
    order: int
    coefficients: list[float]  # w_1 .. w_order
    center: float = 0.5
    name: str = "preference-taylor"

    def __post_init__(self):
        check_order(self.order)
        self.coefficients = [float(w) for w in self.coefficients]
        self.center = float(self.center)
        if len(self.coefficients) != self.order:
            raise ValueError(f"order {self.order} has {self.order} coefficients, got {len(self.coefficients)}")
        if not all(math.isfinite(w) for w in self.coefficients + [self.center]):
            raise ValueError("Taylor coefficients and center must be finite numbers")

    def __call__(self, delta: torch.Tensor, p: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        w = torch.tensor([self.coefficients], dtype=delta.dtype, device=delta.device)
        a = torch.tensor([self.center], dtype=delta.dtype, device=delta.device)
        values = preference_taylor_losses(w, a, delta, p)[0]
        return values.mean() if reduction == "mean" else values

    def formula(self, digits: int = 3) -> str:
        parts = []
        for k, w in enumerate(self.coefficients, start=1):
            if w == 0:
                continue
            base = f"(s-{self.center:.{digits}g})"
            parts.append(f"{'-' if w < 0 else '+'} {abs(w):.{digits}g}*{base}" + (f"^{k}" if k > 1 else ""))
        return "f(s) = " + (" ".join(parts).lstrip("+ ") or "0") + ",  s = sigmoid(Delta)"

    def to_dict(self) -> dict:
        return {
            "family": FAMILY,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "order": self.order,
            "variable": "s = sigmoid(beta * log-ratio margin of the preferred side)",
            "center": self.center,
            "coefficients": {f"s^{k}": w for k, w in enumerate(self.coefficients, start=1)},
        }

    @classmethod
    def from_dict(cls, spec: dict) -> "PreferenceTaylorLoss":
        if spec.get("family") != FAMILY:
            raise ValueError(f"not a preference Taylor loss (family={spec.get('family')!r}, expected {FAMILY!r})")
        if spec.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"loss file format {spec['format_version']} is newer than this lossforge ({FORMAT_VERSION})")
        order = int(spec["order"])
        check_order(order)
        given = dict(spec.get("coefficients", {}))
        unknown = set(given) - {f"s^{k}" for k in range(1, order + 1)}
        if unknown:
            raise ValueError(f"terms {sorted(unknown)} are not in the order-{order} family (s^1 .. s^{order})")
        return cls(order, [check_coefficient(given.get(f"s^{k}", 0.0), "preference", f"s^{k}") for k in range(1, order + 1)],
                   float(spec.get("center", 0.5)), spec.get("name", FAMILY))

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "PreferenceTaylorLoss":
        return load_object(path, cls.from_dict, "loss file")

    @classmethod
    def from_function(cls, f: Callable[[torch.Tensor], torch.Tensor], order: int, center: float = 0.5,
                      name: str = FAMILY) -> "PreferenceTaylorLoss":
        """Coefficients ``f^(k)(a) / k!`` of a smooth ``f(s)``, by nested autograd in float64."""
        check_order(order)
        a = torch.tensor(float(center), dtype=torch.float64, requires_grad=True)
        value, coefficients = f(a), []
        for k in range(1, order + 1):
            if value.requires_grad:
                (value,) = torch.autograd.grad(value, a, create_graph=True, allow_unused=True)
            else:  # the previous derivative was a constant: the rest are 0 (e.g. a linear f)
                value = torch.zeros((), dtype=torch.float64)
            value = torch.zeros((), dtype=torch.float64) if value is None else value
            coefficients.append(float(value.detach()) / math.factorial(k))
        return cls(order, coefficients, center, name)


# Smooth pairwise losses of s = sigmoid(Delta), to seed a search at the losses people use.
SEED_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "dpo": lambda s: -torch.log(s),  # -log sigmoid(Delta)
    "sigmoid": lambda s: 1 - s,  # the "sigmoid loss": maximise the winning probability itself
    "brier": lambda s: (1 - s) ** 2,
}


def preference_taylor_point(name: str, order: int, center: float = 0.5) -> PreferenceTaylorLoss:
    if name not in SEED_FUNCTIONS:
        raise UsageError(f"no preference Taylor seed for {name!r}; choose from {sorted(SEED_FUNCTIONS)}")
    return PreferenceTaylorLoss.from_function(SEED_FUNCTIONS[name], order, center, name=f"{name}-taylor{order}")
