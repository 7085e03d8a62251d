"""What to search: the Taylor family as a Nevergrad parametrisation.

A candidate is one flat vector: the Taylor coefficients (layout of
``trainers.losses.taylor.coefficient_names``) followed by the 4-value expansion centre. How to
search (the optimiser) is chosen elsewhere, by name.
"""
from __future__ import annotations

from dataclasses import dataclass

import nevergrad as ng
import numpy as np

from trainers.losses.taylor import VARIABLES, TaylorLoss, coefficient_names, num_coefficients


@dataclass(frozen=True)
class TaylorSpace:
    order: int = 2
    bound: float = 10.0  # |coefficient| <= bound; Adam makes the overall scale of a loss moot
    center_low: float = 0.05
    center_high: float = 0.95

    @property
    def num_coefficients(self) -> int:
        return num_coefficients(self.order)

    @property
    def dimension(self) -> int:
        return self.num_coefficients + 4

    def names(self) -> list[str]:
        return coefficient_names(self.order) + [f"center:{v}" for v in VARIABLES]

    def parametrization(self, seed: int) -> ng.p.Array:
        lower = np.r_[np.full(self.num_coefficients, -self.bound), np.full(4, self.center_low)]
        upper = np.r_[np.full(self.num_coefficients, self.bound), np.full(4, self.center_high)]
        init = np.r_[np.zeros(self.num_coefficients), np.full(4, 0.5)]
        param = ng.p.Array(init=init, lower=lower, upper=upper)
        param.function.deterministic = False  # fitness is a noisy training outcome
        param.random_state.seed(seed)
        return param

    def split(self, vector) -> tuple[list[float], list[float]]:
        """A candidate vector as (coefficients, center), unvalidated: a NaN an optimiser produced
        must reach training and be scored as a diverged candidate, not crash the trial."""
        vector = np.asarray(vector, dtype=float)
        if vector.shape != (self.dimension,):
            raise ValueError(f"order-{self.order} candidates have {self.dimension} values, got {vector.shape}")
        return vector[: self.num_coefficients].tolist(), vector[-4:].tolist()

    def candidate(self, vector) -> dict:
        """A vector as the ``{"order", "coefficients", "center"}`` a pack trains (unvalidated)."""
        coefficients, center = self.split(vector)
        return {"order": self.order, "coefficients": coefficients, "center": center}

    def to_loss(self, vector, name: str = "taylor") -> TaylorLoss:
        coefficients, center = self.split(vector)
        return TaylorLoss(self.order, coefficients, tuple(center), name=name)

    def to_vector(self, loss: TaylorLoss) -> np.ndarray:
        """A loss as a point of this space, clipped into its bounds."""
        if loss.order != self.order:
            raise ValueError(f"loss {loss.name!r} has order {loss.order}, the search uses order {self.order}")
        coefficients = np.clip(loss.coefficients, -self.bound, self.bound)
        center = np.clip(loss.center, self.center_low, self.center_high)
        return np.r_[coefficients, center]


def check_optimizer(name: str) -> None:
    """A clear error for a name that is not in Nevergrad's registry."""
    if name not in ng.optimizers.registry:
        import difflib

        close = difflib.get_close_matches(name, list(ng.optimizers.registry), n=5)
        raise ValueError(f"unknown optimizer {name!r}" + (f"; did you mean {close}?" if close else ""))


def make_optimizer(name: str, space: TaylorSpace, budget: int, num_workers: int, seed: int):
    """An optimiser from Nevergrad's registry by name."""
    check_optimizer(name)
    return ng.optimizers.registry[name](parametrization=space.parametrization(seed), budget=budget, num_workers=num_workers)
