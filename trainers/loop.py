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

import json
import os
import tempfile
import time
from functools import lru_cache

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from trainers.data.pu import PUSplit, make_pu_split
from trainers.data.shards import read_table
from trainers.data.synthetic import synthetic_pu_problem
from trainers.pu import DIVERGED_FITNESS, PUConfig, TrainTensors, pack_fitness, pack_population, train_epoch

CHECKPOINT_FILE = "population.pt"


@lru_cache(maxsize=4)
def load_split(train: str | None, labelled_frac: float, seed: int, val_frac: float) -> PUSplit:
    """Read (or generate) and split once per worker process; actor reuse keeps it warm.

    Only the training file is read here: the test split never reaches a search worker.
    """
    table = synthetic_pu_problem()[0] if train is None else read_table(train)
    return make_pu_split(table, labelled_frac, seed, val_frac)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Data parallelism by hand: one all-reduce of every gradient, flattened (DDP's job,
    without wrapping the model, so packed populations and HF models share it)."""
    world = dist.get_world_size()
    # Parameters no loss reaches (e.g. a BERT pooler the mean-pooled scorer never uses) have no
    # gradient, on every worker alike.
    params = [p for p in params if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def replicas_in_sync(params: list[torch.Tensor]) -> bool:
    """Whether every data-parallel worker holds the same weights (a checksum's min == max):
    averaged gradients and equal step counts keep them so; anything else is a bug worth seeing."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return True
    checksum = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
    low, high = checksum.clone(), checksum.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.isclose(low, high, rtol=1e-9, atol=1e-9))


def _gradient_sync(params: list[torch.Tensor], alive: torch.Tensor) -> torch.Tensor:
    average_gradients(params)
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


# -- DPO: the same worker infrastructure for preference classifiers --------------------------------

RUN_FILE = "run.pt"


@lru_cache(maxsize=2)
def load_pairs(train: str | None, seed: int):
    """Training pairs once per worker process (the built-in task without a file)."""
    from trainers.data.pairs import read_pairs
    from trainers.dpo import default_pairs

    return default_pairs(seed)[0] if train is None else read_pairs(train)


def _dpo_setup(config: dict):
    from trainers.dpo import DPOConfig, prepare

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    cfg = DPOConfig(**{**config["dpo"], "device": str(device)})
    # Every rank builds the same seeded model and the same reference values; each trains on
    # its slice of every batch and gradients are averaged.
    prep = prepare(cfg, load_pairs(config["train"], cfg.seed), device)
    return cfg, prep, device, rank, world


def _report(metrics: dict, rank: int, state: dict | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0 and state is not None:
            torch.save(state, os.path.join(folder, RUN_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def _append_progress(path: str, metrics: dict) -> None:
    """One JSON line per epoch for the driver to print live (best effort: on a multi-node cluster
    the worker may not share the driver's disk, and the report carries the same numbers)."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(metrics, default=float) + "\n")
    except OSError:
        pass


def _restore():
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, RUN_FILE), map_location="cpu", weights_only=False)


def dpo_worker_loop(config: dict) -> None:
    """``lossforge train-dpo``: one model, a checkpoint and a report per epoch, resumable.

    Config: {"train": path | None, "dpo": DPOConfig fields (no device)}.
    """
    from trainers.dpo import Run, evaluate, resolve_preference_loss, reward_scale, train_epoch

    started = time.perf_counter()
    cfg, prep, device, rank, world = _dpo_setup(config)
    loss = resolve_preference_loss(cfg.loss)
    run = Run.start(prep.model, cfg)
    state = _restore()
    if state is not None:
        run.load_state_dict(state)
    resumed_from_epoch = run.epoch
    sync = average_gradients if world > 1 else None
    while run.epoch < cfg.epochs:
        t0 = time.perf_counter()
        train_loss = train_epoch(run.model, run.optimizer, prep.train, loss, cfg, run.generator, device, (rank, world), sync)
        train_seconds = time.perf_counter() - t0
        val = evaluate(run.model, prep.val, reward_scale(loss, cfg.effective_beta), cfg, device)
        run.record({"train_loss": train_loss, "train_seconds": train_seconds, **val})
        finished = run.epoch >= cfg.epochs or val["status"] != "ok"
        metrics = {"epoch": run.epoch, "train_loss": train_loss, "val_agreement": val.get("agreement"),
                   "val_agreement_lc": val.get("agreement_lc"), "best_val_agreement": run.best_agreement,
                   "train_pairs": prep.split_sizes[0], "val_pairs": prep.split_sizes[1],
                   "truncated_pairs": prep.train.truncated + prep.val.truncated,
                   "resumed_from_epoch": resumed_from_epoch, "train_seconds": train_seconds,
                   "replicas_in_sync": replicas_in_sync(list(run.model.parameters())),
                   "worker_seconds": time.perf_counter() - started, "run_finished": finished}
        if rank == 0 and config.get("progress"):
            _append_progress(config["progress"], metrics)
        _report(metrics, rank, run.state_dict())
        if finished:
            break


def dpo_pack_worker_loop(config: dict) -> None:
    """A DPO search trial: K candidate losses of the preference Taylor family, trained one after
    another from the same initial weights on data tokenised (and reference values computed) once.

    Transformers do not stack into one vectorised step the way the PU MLPs do, so a DPO pack
    amortises the fixed costs (Train job start, data, tokenising, reference pass) rather than the
    steps. One report (and checkpoint of the finished candidates) per candidate; a restarted
    pack skips the candidates it already finished.
    Config: {"train", "dpo", "candidates": [{"id", "coefficients", "center"}]}.
    """
    from trainers.dpo import Run, evaluate, taylor_pair_loss, train_epoch

    started = time.perf_counter()
    cfg, prep, device, rank, world = _dpo_setup(config)
    initial = {k: v.detach().clone() for k, v in prep.model.state_dict().items()}
    done = (_restore() or {}).get("done", {})  # candidate id -> (fitness, status)
    sync = average_gradients if world > 1 else None
    candidates = config["candidates"]
    train_seconds = 0.0

    def pack_metrics(finished: bool) -> dict:
        ids = [c["id"] for c in candidates if str(c["id"]) in done]
        ok = [done[str(i)][0] for i in ids if done[str(i)][1] == "ok"]
        return {
            "candidate_ids": ids,
            "candidate_fitness": [done[str(i)][0] if done[str(i)][1] == "ok" else DIVERGED_FITNESS for i in ids],
            "candidate_status": [done[str(i)][1] for i in ids],
            "best_fitness": max(ok, default=DIVERGED_FITNESS),
            "epoch": len(ids),  # candidates finished: a DPO pack's unit of progress
            "pack_finished": finished,
            "train_seconds": train_seconds,
            "worker_seconds": time.perf_counter() - started,
        }

    pending = [c for c in candidates if str(c["id"]) not in done]
    if not pending:  # restarted after its last candidate: say so once more
        _report(pack_metrics(True), rank, {"done": done})
    for index, candidate in enumerate(pending):
        prep.model.load_state_dict(initial)
        loss = taylor_pair_loss(candidate["coefficients"], candidate["center"])
        run = Run.start(prep.model, cfg)
        t0 = time.perf_counter()
        while run.epoch < cfg.epochs:
            train_loss = train_epoch(run.model, run.optimizer, prep.train, loss, cfg, run.generator, device, (rank, world), sync)
            val = evaluate(run.model, prep.val, cfg.effective_beta, cfg, device)
            run.record({"train_loss": train_loss, **val})
            if not np.isfinite(train_loss) or val["status"] != "ok":
                break
        train_seconds += time.perf_counter() - t0
        ok = run.best_state is not None and all(h.get("status") == "ok" for h in run.history)
        done[str(candidate["id"])] = (run.best_agreement, "ok") if ok else (float("nan"), "diverged")
        _report(pack_metrics(index == len(pending) - 1), rank, {"done": done})
