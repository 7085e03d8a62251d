"""The per-trial driver: one Tune trial = one Ray Train job that trains a pack of candidates.

It turns the searcher's candidate vectors into Taylor losses, starts a ``TorchTrainer`` running
the shared worker loop, and lets ``TuneReportCallback`` forward each epoch's rank-0 report to
Tune. The Train run is named after the pack, so a pack re-dispatched after a crash resumes from
its newest checkpoint.
"""
from __future__ import annotations

from ray import train, tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from search.space import space_for
from trainers.loop import dpo_pack_worker_loop, pu_worker_loop


def train_run_name(pack: int) -> str:
    return f"pack-{pack:05d}"


def pack_trial(config: dict, setup: dict) -> None:
    """Tune function trainable. ``config`` comes from the searcher, ``setup`` is the same for every trial."""
    task = setup.get("task", "pu")
    space = space_for(task, setup["order"])
    candidates = [{"id": c["id"], **space.candidate(c["vector"])} for c in config["candidates"]]
    gpus = setup["gpus_per_worker"]
    if task == "pu":
        loop, loop_config = pu_worker_loop, {
            "data": setup["data"], "pu": setup["pu"], "candidates": candidates, "seeds": setup["seeds"], "prior": setup["prior"],
        }
    else:
        loop, loop_config = dpo_pack_worker_loop, {"train": setup["train"], "dpo": setup["dpo"], "candidates": candidates}
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=train.ScalingConfig(
            num_workers=setup["workers_per_trial"],
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": setup["cpus_per_worker"], **({"GPU": gpus} if gpus > 0 else {})},
        ),
        run_config=train.RunConfig(
            name=train_run_name(config["pack"]),
            storage_path=setup["train_storage"],
            callbacks=[TuneReportCallback()],
            failure_config=train.FailureConfig(max_failures=setup["max_failures"]),
            checkpoint_config=train.CheckpointConfig(num_to_keep=2),
        ),
    )
    trainer.fit()


def trainable(setup: dict):
    """The trial function with its fixed setup bound, asking Tune for (almost) no resources:
    the Train workers get their own placement group (see ../shared/notes/ray-2.60.md)."""
    return tune.with_resources(tune.with_parameters(pack_trial, setup=setup), {"cpu": 0, "memory": 1})
