"""What to search: a loss family as a Nevergrad parametrisation, one per task.

``pu``: the 4-variate Taylor family of the selector/discriminator game. A candidate is one flat
vector: the Taylor coefficients (layout of ``trainers.losses.taylor.coefficient_names``)
followed by the 4-value expansion centre.
``dpo``: the preference Taylor family in s = sigmoid(Delta): coefficients w_1..w_order, then
the centre.
Both spaces implement :class:`LossSpace`, so the searcher, the trial and the report do not care
which one they hold. How to search (the optimiser) is chosen elsewhere, by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import nevergrad as ng
import numpy as np

from trainers.losses.preference_taylor import PreferenceTaylorLoss, check_order, preference_taylor_point
from trainers.losses.seeds import taylor_point
from trainers.errors import UsageError
from trainers.losses.taylor import VARIABLES, TaylorLoss, coefficient_names, num_coefficients
from trainers.zoo import ZOO_PREFIX


class LossSpace(Protocol):
    """What to search: a loss family as a box of real vectors."""

    order: int

    @property
    def dimension(self) -> int: ...

    def names(self) -> list[str]: ...  # one per vector entry, for the leaderboard

    def parametrization(self, seed: int) -> ng.p.Array: ...

    def seed_point(self, name: str, prior: float = 0.5) -> np.ndarray: ...  # a hand-made loss as a vector

    def candidate(self, vector) -> dict: ...  # what a pack trains: {"order", "coefficients", "center"}

    def to_loss(self, vector, name: str): ...  # a loss object with save() and formula()

    def to_vector(self, loss) -> np.ndarray: ...


def _box(num_coefficients: int, num_center: int, bound: float, low: float, high: float, seed: int,
         init: np.ndarray) -> ng.p.Array:
    """Coefficients in [-bound, bound], centres in [low, high], starting at ``init``: a hand-made
    loss, because an optimiser's first ask is the start (the all-zero polynomial trains nothing
    and would waste a slot of every search)."""
    lower = np.r_[np.full(num_coefficients, -bound), np.full(num_center, low)]
    upper = np.r_[np.full(num_coefficients, bound), np.full(num_center, high)]
    param = ng.p.Array(init=init, lower=lower, upper=upper)
    param.function.deterministic = False  # fitness is a noisy training outcome
    param.random_state.seed(seed)
    return param


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
        """Starts at PAN, the game the family generalises."""
        return _box(self.num_coefficients, 4, self.bound, self.center_low, self.center_high, seed, self.seed_point("pan"))

    def seed_point(self, name: str, prior: float = 0.5) -> np.ndarray:
        """A hand-made loss (pan, naive, upu, nnpu), or a shipped one (zoo:NAME) of this order, as a
        point of this space: a search can start from what earlier searches found."""
        if name.startswith(ZOO_PREFIX):
            from trainers.pu import resolve_loss

            return self.to_vector(resolve_loss(name))  # to_vector refuses a loss of another order
        return self.to_vector(taylor_point(name, self.order, prior=prior))

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
            raise UsageError(f"loss {loss.name!r} has order {loss.order}, the search uses order {self.order}")
        coefficients = np.clip(loss.coefficients, -self.bound, self.bound)
        center = np.clip(loss.center, self.center_low, self.center_high)
        return np.r_[coefficients, center]


@dataclass(frozen=True)
class PreferenceTaylorSpace:
    order: int = 2
    bound: float = 10.0
    center_low: float = 0.05
    center_high: float = 0.95

    def __post_init__(self):
        check_order(self.order)

    @property
    def dimension(self) -> int:
        return self.order + 1

    def names(self) -> list[str]:
        return [f"s^{k}" for k in range(1, self.order + 1)] + ["center:s"]

    def parametrization(self, seed: int) -> ng.p.Array:
        """Starts at DPO's loss."""
        return _box(self.order, 1, self.bound, self.center_low, self.center_high, seed, self.seed_point("dpo"))

    def seed_point(self, name: str, prior: float = 0.5) -> np.ndarray:
        """A hand-made pairwise loss (dpo, sigmoid, brier) as a point of this space."""
        return self.to_vector(preference_taylor_point(name, self.order))

    def candidate(self, vector) -> dict:
        """A vector as ``{"order", "coefficients", "center"}``, unvalidated (NaN passes through)."""
        vector = np.asarray(vector, dtype=float)
        if vector.shape != (self.dimension,):
            raise ValueError(f"order-{self.order} preference candidates have {self.dimension} values, got {vector.shape}")
        return {"order": self.order, "coefficients": vector[:-1].tolist(), "center": float(vector[-1])}

    def to_loss(self, vector, name: str = "preference-taylor") -> PreferenceTaylorLoss:
        c = self.candidate(vector)
        return PreferenceTaylorLoss(self.order, c["coefficients"], c["center"], name=name)

    def to_vector(self, loss: PreferenceTaylorLoss) -> np.ndarray:
        if loss.order != self.order:
            raise UsageError(f"loss {loss.name!r} has order {loss.order}, the search uses order {self.order}")
        return np.r_[np.clip(loss.coefficients, -self.bound, self.bound), np.clip(loss.center, self.center_low, self.center_high)]


def check_optimizer(name: str) -> None:
    """A clear error for a name that is not in Nevergrad's registry."""
    if name not in ng.optimizers.registry:
        import difflib

        close = difflib.get_close_matches(name, list(ng.optimizers.registry), n=5)
        raise UsageError(f"unknown optimizer {name!r}" + (f"; did you mean {close}?" if close else ""))


def make_nevergrad_optimizer(name: str, space: LossSpace, budget: int, num_workers: int, seed: int):
    """An optimiser from Nevergrad's registry by name."""
    check_optimizer(name)
    return ng.optimizers.registry[name](parametrization=space.parametrization(seed), budget=budget, num_workers=num_workers)
