"""The per-trial driver: one Tune trial = one Ray Train job that trains a pack of candidates.

It turns the searcher's candidate vectors into the task's candidates, wraps them with the
search's plan into a :class:`PackJob`, and runs the task's worker loop as a Train job whose
rank-0 reports ``TuneReportCallback`` forwards to Tune. The Train run is named after the pack,
so a pack re-dispatched after a crash resumes from its newest checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from search.session.ray_session import Scaling, train_job
from trainers.boundary import PackJob


@dataclass
class TrialSetup:
    """What every trial of a search shares: the task's space (vectors -> candidates), its worker
    loop and plan, resources, and where Train runs live."""

    space: object  # a search.engine.space.LossSpace
    worker_loop: Callable[[dict], None]
    plan: object  # the task's plan dataclass (PUPackPlan, DPOPackPlan)
    scaling: Scaling
    train_storage: str


def train_run_name(pack: int) -> str:
    return f"pack-{pack:05d}"


def pack_trial(config: dict, setup: TrialSetup) -> None:
    """Tune function trainable. ``config`` comes from the searcher, ``setup`` is the same for every trial."""
    space = setup.space
    job = PackJob(config["pack"], [{"id": c["id"], **space.candidate(c["vector"])} for c in config["candidates"]], setup.plan)
    trainer = train_job(setup.worker_loop, {"job": job}, setup.scaling, train_run_name(job.pack), setup.train_storage,
                        callbacks=[TuneReportCallback()])
    trainer.fit()


def trainable(setup: TrialSetup):
    """The trial function with its fixed setup bound, asking Tune for (almost) no resources:
    the Train workers get their own placement group (see ../shared/notes/ray-2.60.md)."""
    return tune.with_resources(tune.with_parameters(pack_trial, setup=setup), {"cpu": 0, "memory": 1})
