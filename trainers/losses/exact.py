"""A loss file that names a hand-made loss instead of holding a polynomial.

A search whose controls train as the exact hand-made losses exports one of them when no searched
loss beats it: ``{"family": "exact", "loss": "naive"}``. ``train-pu --loss FILE`` then trains that
loss itself, not its Taylor point (which scores below it: 71.4 against PAN's 72.7 F1 on RT).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainers.files import write_json

FAMILY = "exact"


@dataclass(frozen=True)
class ExactLoss:
    loss: str  # a hand-made loss's name, as --loss takes it
    name: str = ""

    def to_dict(self) -> dict:
        return {"family": FAMILY, "format_version": 1, "loss": self.loss, "name": self.name or self.loss}

    @classmethod
    def from_dict(cls, spec: dict) -> "ExactLoss":
        if spec.get("family") != FAMILY:
            raise ValueError(f"not a named hand-made loss (family={spec.get('family')!r})")
        if not isinstance(spec["loss"], str):
            raise ValueError(f"'loss' must be a loss name, got {spec['loss']!r}")
        return cls(spec["loss"], str(spec.get("name", "")))

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    def formula(self) -> str:
        return f"{self.loss}: the exact hand-made loss (train-pu --loss {self.loss} trains the same)"
