"""What crosses the Ray boundary between a search's driver and its pack workers, as dataclasses.

Driver -> worker: a :class:`PackJob` (the pack's number, its candidates, and the task's plan,
itself a dataclass). Worker -> driver: a :class:`PackReport` per report, which travels through
``ray.train.report`` and Tune as a flat dict (``to_dict``) and is read back with ``from_dict``
by the searcher and the progress printer. No Ray and no torch here: both sides import it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np

# Told to the optimiser for a candidate that diverged (NaN/inf loss or weights), was rejected
# before training, or whose trial failed: below every fitness a task reports (agreements and
# AUCs lie in [0, 1]; PU margins over a control, even in noise units, stay far above it).
DIVERGED_FITNESS = -1000.0


def loss_point(loss: dict) -> np.ndarray:
    """A loss's point in the search space, as the optimiser and the evaluation log hold it: its
    Taylor coefficients, then its centre."""
    return np.r_[loss["coefficients"], loss["center"]]


def same_point(a, b) -> bool:
    """Whether two points are one loss. A point read back from JSON or from the optimiser's
    transforms differs from the asked one by rounding only, so equality is up to a tolerance."""
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=1e-9)


@dataclass
class CandidateResult:
    """One candidate's evaluation, as told to the optimiser and written to the evaluation log.

    ``details`` holds what the task knows beyond the fitness (PU: the rung reached, per data
    set the paired margin, its spread, the control's fitness); plain JSON values."""

    id: int
    fitness: float
    status: str  # ok | diverged | rejected | error
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=float))  # plain values (a checkpoint is data)

    @classmethod
    def from_dict(cls, d: dict) -> "CandidateResult":
        return cls(int(d["id"]), float(d["fitness"]), str(d["status"]), dict(d.get("details") or {}))


@dataclass
class PackJob:
    """One trial's work: train ``candidates`` (each ``{"id", ...task's candidate fields}``)
    under ``plan`` (the task's plan dataclass, the same for every pack of a search)."""

    pack: int
    candidates: list[dict]
    plan: object


@dataclass
class PackReport:
    """A pack worker's report: results so far and where it stands.

    ``progress``/``total`` count the task's unit (PU: rungs of successive halving; DPO:
    candidates). ``finished`` is deliberately not called ``done``: Tune reads a result's
    ``done`` as "stop this trial now" and would kill the Train run mid-shutdown."""

    results: list[CandidateResult]
    progress: int
    total: int
    finished: bool
    alive: int = 0  # candidates still training (PU halving)
    resumed_from: int = 0
    train_seconds: float = 0.0
    worker_seconds: float = 0.0
    unit: str = "rung"
    device: str = ""  # what the worker trained on (see trainers.loop.assigned_devices)

    KEY = "lossforge_pack"  # the one key a report carries in Tune's result dict

    @property
    def best_fitness(self) -> float:
        ok = [r.fitness for r in self.results if r.status == "ok"]
        return max(ok, default=DIVERGED_FITNESS)

    def to_dict(self) -> dict:
        """Tune's result dict: ``best_fitness`` (the searcher's metric) at the top level, the
        report itself as one JSON string (Tune's loggers flatten nested values and would mangle
        the per-candidate results)."""
        return {"best_fitness": self.best_fitness, "progress": self.progress, self.KEY: json.dumps(asdict(self))}

    @classmethod
    def from_dict(cls, result: dict | None) -> "PackReport | None":
        """The report inside a Tune result, or None if the result carries none."""
        if not result or cls.KEY not in result:
            return None
        d = json.loads(result[cls.KEY])
        d["results"] = [CandidateResult.from_dict(r) for r in d.get("results", [])]
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class PUTrainJob:
    """``lossforge train-pu --workers``: what every data-parallel worker trains (driver -> worker)."""

    train: str  # path or URI of the whole pool; each worker reads its share
    pu: object  # trainers.config.PUConfig
    loss: str | dict  # a baseline's name, or a Taylor loss as TaylorLoss.to_dict()
