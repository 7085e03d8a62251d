"""The Taylor loss family for the selector/discriminator game.

A loss is one polynomial per player in the four quantities

    v = (d_p, d_u, c_p, c_u) = (D(x_p), D(x_u), C(x_p), C(x_u))

(probabilities, each in (0, 1)), expanded around a centre ``a``:

    L(v) = sum_e  w_e * prod_i (v_i - a_i) ** e_i,      1 <= |e| <= order

evaluated on randomly paired (positive, unlabelled) samples and averaged over the pairs.
The discriminator D minimises L_D and the selector C minimises L_C. As in TaylorGLO, the
constant term is dropped (it has no gradient) and so is every term without a variable of
the player that minimises it (e.g. ``c_u^2`` in L_D): they cannot change that player's
update, so an optimiser searching over them would only chase noise.

Everything here is plain tensor arithmetic. The functional core
(:func:`taylor_player_losses`) takes a *population* of coefficient vectors, shape
``[K, T]``, so K candidate losses train side by side in one vectorised step; the
:class:`TaylorLoss` object is one point of the family with names, JSON and a formula.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from trainers.errors import UsageError
from trainers.files import load_object, write_json

VARIABLES = ("d_p", "d_u", "c_p", "c_u")
PLAYERS = ("discriminator", "selector")
# Which variables belong to which player: a term must contain one of them to be kept.
_PLAYER_VARIABLES = {"discriminator": (0, 1), "selector": (2, 3)}
MAX_ORDER = 4
FORMAT_VERSION = 1


def exponents(order: int, player: str) -> list[tuple[int, ...]]:
    """Exponent tuples of the kept terms of one player's polynomial, in a fixed order.

    Sorted by total degree, then lexicographically (largest power of d_p first), so the
    coefficient layout is stable across versions and readable.
    """
    if not 1 <= order <= MAX_ORDER:
        raise UsageError(f"Taylor order must be between 1 and {MAX_ORDER}, got {order}")
    if player not in _PLAYER_VARIABLES:
        raise ValueError(f"player must be one of {PLAYERS}, got {player!r}")
    own = _PLAYER_VARIABLES[player]
    kept = []
    for degree in range(1, order + 1):
        for e in sorted(
            (e for e in itertools.product(range(degree + 1), repeat=4) if sum(e) == degree),
            reverse=True,
        ):
            if any(e[i] > 0 for i in own):
                kept.append(e)
    return kept


def term_name(e: Sequence[int]) -> str:
    """``(2, 0, 0, 1)`` -> ``'d_p^2*c_u'``."""
    parts = [v if k == 1 else f"{v}^{k}" for v, k in zip(VARIABLES, e) if k > 0]
    return "*".join(parts)


def parse_term(name: str) -> tuple[int, ...]:
    """Inverse of :func:`term_name`; rejects unknown variables and repeated ones."""
    e = [0, 0, 0, 0]
    for factor in name.replace(" ", "").split("*"):
        var, _, power = factor.partition("^")
        if var not in VARIABLES:
            raise ValueError(f"unknown variable {var!r} in term {name!r}; expected one of {VARIABLES}")
        i = VARIABLES.index(var)
        if e[i]:
            raise ValueError(f"variable {var!r} repeated in term {name!r}")
        try:
            e[i] = int(power) if power else 1
        except ValueError:
            raise ValueError(f"bad power {power!r} in term {name!r}") from None
        if e[i] < 1:
            raise ValueError(f"bad power {power!r} in term {name!r}")
    return tuple(e)


def coefficient_names(order: int) -> list[str]:
    """Flat names of the coefficient vector: discriminator terms, then selector terms."""
    return [f"D:{term_name(e)}" for e in exponents(order, "discriminator")] + [
        f"C:{term_name(e)}" for e in exponents(order, "selector")
    ]


def num_coefficients(order: int) -> int:
    return len(exponents(order, "discriminator")) + len(exponents(order, "selector"))


def _monomials(values: torch.Tensor, center: torch.Tensor, exps: torch.Tensor, order: int) -> torch.Tensor:
    """values [K, B, 4], center [K, 4], exps [T, 4] -> monomials [K, B, T]."""
    h = values - center[:, None, :]
    # powers[..., i, p] = h_i ** p for p = 0..order
    powers = torch.stack([torch.ones_like(h)] + [h**p for p in range(1, order + 1)], dim=-1)
    index = exps.T.reshape(1, 1, 4, -1).expand(*h.shape[:2], 4, exps.shape[0])
    return torch.gather(powers, -1, index).prod(dim=-2)


def taylor_player_losses(
    coefficients: torch.Tensor,
    center: torch.Tensor,
    order: int,
    d_p: torch.Tensor,
    d_u: torch.Tensor,
    c_p: torch.Tensor,
    c_u: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member losses (L_D, L_C), each ``[K]``, averaged over the B pairs.

    coefficients: ``[K, T]`` in the layout of :func:`coefficient_names`; center: ``[K, 4]``;
    d_p, d_u, c_p, c_u: ``[K, B]`` probabilities. Detach the other player's quantities
    before calling to get the usual alternating game.
    """
    exps_d = torch.tensor(exponents(order, "discriminator"), device=d_p.device)
    exps_c = torch.tensor(exponents(order, "selector"), device=d_p.device)
    if coefficients.shape[-1] != len(exps_d) + len(exps_c):
        raise ValueError(
            f"order {order} needs {len(exps_d) + len(exps_c)} coefficients, got {coefficients.shape[-1]}"
        )
    values = torch.stack([d_p, d_u, c_p, c_u], dim=-1)
    w_d, w_c = coefficients[:, : len(exps_d)], coefficients[:, len(exps_d) :]
    loss_d = torch.einsum("kbt,kt->k", _monomials(values, center, exps_d, order), w_d) / values.shape[1]
    loss_c = torch.einsum("kbt,kt->k", _monomials(values, center, exps_c, order), w_c) / values.shape[1]
    return loss_d, loss_c


@dataclass
class TaylorLoss:
    """One point of the Taylor family: order, centre and named coefficients."""

    order: int
    coefficients: list[float]  # layout of coefficient_names(order)
    center: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.5)
    name: str = "taylor"

    def __post_init__(self):
        self.coefficients = [float(w) for w in self.coefficients]
        self.center = tuple(float(a) for a in self.center)
        n = num_coefficients(self.order)
        if len(self.coefficients) != n:
            raise ValueError(f"order {self.order} has {n} coefficients, got {len(self.coefficients)}")
        if len(self.center) != 4:
            raise ValueError(f"center needs 4 values {VARIABLES}, got {len(self.center)}")
        if not all(math.isfinite(w) for w in self.coefficients + list(self.center)):
            raise ValueError("Taylor coefficients and center must be finite numbers")

    # -- the loss ------------------------------------------------------------------------
    def __call__(self, d_p, d_u, c_p, c_u) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_D, L_C) for 1-D batches of paired probabilities."""
        w = torch.tensor([self.coefficients], dtype=d_p.dtype, device=d_p.device)
        a = torch.tensor([self.center], dtype=d_p.dtype, device=d_p.device)
        loss_d, loss_c = taylor_player_losses(w, a, self.order, *(t[None] for t in (d_p, d_u, c_p, c_u)))
        return loss_d[0], loss_c[0]

    # -- names -----------------------------------------------------------------------------
    def named(self) -> dict[str, float]:
        return dict(zip(coefficient_names(self.order), self.coefficients))

    def player_terms(self, player: str) -> dict[str, float]:
        prefix = "D:" if player == "discriminator" else "C:"
        return {k[2:]: w for k, w in self.named().items() if k.startswith(prefix)}

    def formula(self, digits: int = 3, min_abs: float = 0.0) -> str:
        """Readable polynomials, e.g. ``L_D = -2.0*(d_p-0.5) + 1.3*(d_u-0.5)^2 ...``."""
        lines = []
        for player, label in (("discriminator", "L_D"), ("selector", "L_C")):
            parts = []
            for e, w in zip(exponents(self.order, player), self.player_terms(player).values()):
                if abs(w) <= min_abs:
                    continue
                factors = []
                for v, a, k in zip(VARIABLES, self.center, e):
                    if k == 0:
                        continue
                    base = v if a == 0 else f"({v}{'-' if a > 0 else '+'}{abs(a):.{digits}g})"
                    factors.append(base if k == 1 else f"{base}^{k}")
                sign = "-" if w < 0 else "+"
                parts.append(f"{sign} {abs(w):.{digits}g}*{'*'.join(factors)}")
            body = " ".join(parts).lstrip("+ ") if parts else "0"
            lines.append(f"{label} = {body}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.formula()

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "family": "taylor",
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "order": self.order,
            "variables": list(VARIABLES),
            "center": dict(zip(VARIABLES, self.center)),
            "discriminator": self.player_terms("discriminator"),
            "selector": self.player_terms("selector"),
        }

    @classmethod
    def from_dict(cls, spec: dict) -> "TaylorLoss":
        if spec.get("family") != "taylor":
            raise ValueError(f"not a Taylor loss spec (family={spec.get('family')!r})")
        if spec.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"loss file format {spec['format_version']} is newer than this lossforge ({FORMAT_VERSION})")
        order = int(spec["order"])
        center = spec.get("center", dict.fromkeys(VARIABLES, 0.5))
        if isinstance(center, dict):
            center = [center[v] for v in VARIABLES]
        coefficients = []
        for player in PLAYERS:
            given = {parse_term(k): check_coefficient(w, player, k) for k, w in spec.get(player, {}).items()}
            allowed = exponents(order, player)
            unknown = set(given) - set(allowed)
            if unknown:
                raise ValueError(
                    f"{player} terms {sorted(term_name(e) for e in unknown)} are not in the order-{order} family "
                    "(too high a degree, or no variable of that player)"
                )
            coefficients += [given.get(e, 0.0) for e in allowed]  # omitted terms are zero
            if player == "selector" and not any(given.values()):
                raise ValueError("selector: no non-zero term, so the selector would never learn")
        return cls(order=order, coefficients=coefficients, center=tuple(center), name=spec.get("name", "taylor"))

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "TaylorLoss":
        return load_object(path, cls.from_dict, "loss file")

    @classmethod
    def from_function(
        cls,
        f: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        order: int,
        center: Sequence[float] = (0.5, 0.5, 0.5, 0.5),
        name: str = "taylor",
    ) -> "TaylorLoss":
        """Taylor coefficients of ``f(d_p, d_u, c_p, c_u) -> (L_D, L_C)`` around ``center``.

        ``f`` acts on one pair of scalar tensors. Each coefficient is
        ``(d^|e| f / dv^e)(center) / prod(e_i!)``, computed with nested autograd in float64.
        The constant and the terms a player cannot move are dropped, as in the family itself.
        """
        a = torch.tensor(list(center), dtype=torch.float64, requires_grad=True)
        values = f(*a)
        coefficients = []
        for player, value in zip(PLAYERS, values):
            derivatives: dict[tuple[int, ...], torch.Tensor] = {(0, 0, 0, 0): value}

            def derivative(e: tuple[int, ...]) -> torch.Tensor:
                if e not in derivatives:
                    i = max(j for j in range(4) if e[j] > 0)  # peel one power off the last variable
                    lower = list(e)
                    lower[i] -= 1
                    g = derivative(tuple(lower))
                    if g.requires_grad:
                        (grad,) = torch.autograd.grad(g, a, create_graph=True, allow_unused=True)
                        derivatives[e] = grad[i] if grad is not None else torch.zeros((), dtype=a.dtype)
                    else:
                        derivatives[e] = torch.zeros((), dtype=a.dtype)
                return derivatives[e]

            for e in exponents(order, player):
                coefficients.append(float(derivative(e).detach()) / math.prod(math.factorial(k) for k in e))
        return cls(order=order, coefficients=coefficients, center=tuple(float(c) for c in center), name=name)


# A search's coefficients lie within +-10 (search.engine.space); far larger ones only overflow in training.
MAX_COEFFICIENT = 1e6


def check_coefficient(value, player: str, term: str) -> float:
    """A loss file's coefficient: a JSON number (not a string, not a boolean), finite and in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{player} term {term!r}: the coefficient must be a number, got {value!r}")
    if not math.isfinite(value) or abs(value) > MAX_COEFFICIENT:
        raise ValueError(f"{player} term {term!r}: the coefficient {value!r} is out of range (|w| <= {MAX_COEFFICIENT:g})")
    return float(value)
