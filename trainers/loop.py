"""The Ray Train worker loop: data once per worker, a packed population, a checkpoint and one
report per epoch. The only module of ``trainers`` that imports Ray.

A trial hands the loop a *pack*: K candidate losses, each trained with S seeds, so K x S
selector/discriminator pairs train in one vectorised step (``trainers.pu``). Every epoch rank 0
reports each candidate's validation fitness (mean over its seeds) with a checkpoint; a re-run
of the same Train run name resumes from the newest checkpoint. With several workers the loop is
data-parallel: each takes a shard of the unlabelled pool and gradients are averaged.

Config keys (all plain JSON values, so Tune can log them):
  data:        {"train": path | None, "labelled_frac", "seed", "val_frac"}
  pu:          PUConfig fields (epochs, batch_size, lr, hidden, depth, dropout, fitness, ...)
  candidates:  [{"id", "order", "coefficients", "center"}]
  seeds:       member seeds per candidate
  prior:       class prior for fitness that needs one, or None
"""
from __future__ import annotations

import os
import tempfile
import time
from functools import lru_cache

import ray.train
import torch
import torch.distributed as dist

from trainers.data.pu import PUSplit, make_pu_split
from trainers.data.shards import read_table
from trainers.data.synthetic import synthetic_pu_problem
from trainers.pu import PUConfig, TrainTensors, pack_fitness, pack_population, train_epoch

CHECKPOINT_FILE = "population.pt"


@lru_cache(maxsize=4)
def load_split(train: str | None, labelled_frac: float, seed: int, val_frac: float) -> PUSplit:
    """Read (or generate) and split once per worker process; actor reuse keeps it warm.

    Only the training file is read here: the test split never reaches a search worker.
    """
    table = synthetic_pu_problem()[0] if train is None else read_table(train)
    return make_pu_split(table, labelled_frac, seed, val_frac)


def _gradient_sync(params: list[torch.Tensor], alive: torch.Tensor) -> torch.Tensor:
    world = dist.get_world_size()
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n
    agreed = alive.to(torch.int32)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)  # a member dead on one worker is dead everywhere
    return agreed.bool()


def pu_worker_loop(config: dict) -> None:
    started = time.perf_counter()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    cfg = PUConfig(**{**config["pu"], "device": str(device)})
    d = config["data"]
    split = load_split(d["train"], d["labelled_frac"], d["seed"], d["val_frac"])
    candidates = config["candidates"]
    seeds = list(config["seeds"])
    pop = pack_population(candidates, seeds, split.dim, cfg, stream=rank)
    data = TrainTensors.from_split(split, "taylor", device, shard=(rank, world))

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group, or a pack re-dispatched after a crash
        with checkpoint.as_directory() as folder:
            pop.load_state_dict(torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location=device, weights_only=False))
    resumed_from_epoch = pop.epoch

    sync = _gradient_sync if world > 1 else None
    train_seconds = 0.0
    while pop.epoch < cfg.epochs:
        t0 = time.perf_counter()
        train_epoch(pop, data, cfg, sync=sync)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - t0
        per_candidate = pack_fitness(pop, split, cfg, config.get("prior"), len(seeds))
        all_diverged = not bool(pop.alive.any())
        finished = pop.epoch >= cfg.epochs or all_diverged  # all diverged: nothing left to learn, stop early
        metrics = {
            "epoch": pop.epoch,
            "candidate_ids": [c["id"] for c in candidates],
            "candidate_fitness": [f for f, _ in per_candidate],
            "candidate_status": [s for _, s in per_candidate],
            "best_fitness": max(f for f, _ in per_candidate),
            # Not "done": Tune reads a result's `done` as "stop this trial now" and would kill the
            # trial (and the Train run inside it, leaking its placement group) mid-shutdown.
            "pack_finished": finished,
            "resumed_from_epoch": resumed_from_epoch,
            "train_seconds": train_seconds,
            "worker_seconds": time.perf_counter() - started,
        }
        with tempfile.TemporaryDirectory() as folder:
            report_checkpoint = None
            if rank == 0:
                torch.save(pop.state_dict(), os.path.join(folder, CHECKPOINT_FILE))
                report_checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=report_checkpoint)
        if finished:
            break
