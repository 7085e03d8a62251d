"""The Ray Train worker loops: the only module of ``trainers`` that imports Ray.

Each loop wraps a recipe's own training loop (``trainers.pu_pack.run_pack``,
``trainers.dpo.run_epochs``) with what a Ray Train job adds: the worker's rank and device,
gradient averaging across data-parallel workers, and a checkpoint with each report, from which
a restarted worker group (or a pack re-dispatched after a crash) resumes.

  pu_pack_worker_loop   a PU search pack (PackJob in, PackReport per rung out)
  pu_worker_loop        ``lossforge train-pu --workers``: one classifier on shares of the pool
  dpo_pack_worker_loop  a DPO search pack (PackJob in, PackReport per candidate out)
  dpo_worker_loop       ``lossforge train-dpo``: one model, a report per epoch
  pair_worker_loop      ``lossforge train-dpo --mode pair``: caching, then reports (and
                        checkpoints) every few minutes inside an epoch as well
"""
from __future__ import annotations

import os
import tempfile
import time
from functools import lru_cache

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from trainers.boundary import DIVERGED_FITNESS, CandidateResult, PackJob, PackReport, PUTrainJob, loss_point, same_point
from trainers.checkpoints import STATE_FILE, load_state, save_state
from trainers.pu_pack import PackState, run_pack


# -- shared by every loop ---------------------------------------------------------------------------


def worker_context() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this Train worker, which uses as many threads as it was
    given CPUs (whatever OMP_NUM_THREADS says). A worker given a GPU on a machine where torch
    sees no CUDA (a cluster advertising GPUs it lacks, a CPU build of torch) trains on the CPU."""
    context = ray.train.get_context()
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))
    return context.get_world_rank(), context.get_world_size(), device


def assigned_devices(device: torch.device) -> str:
    """What this worker was given and trains on (``device``, from :func:`worker_context`), e.g.
    ``cpu (GPU 2 x0.25 assigned, CUDA absent)``."""
    share = ray.get_runtime_context().get_assigned_resources().get("GPU")
    if not share:
        return str(device)
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    return f"{device} (GPU {gpus} x{share:g} assigned{'' if device.type == 'cuda' else ', CUDA absent'})"


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


def population_sync(params: list[torch.Tensor], alive: torch.Tensor) -> torch.Tensor:
    average_gradients(params)
    agreed = alive.to(torch.int32)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)  # a member dead on one worker is dead everywhere
    return agreed.bool()


def report(metrics: dict, rank: int, state: dict | None) -> None:
    """One report; rank 0 attaches ``state`` as the checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0 and state is not None:
            save_state(state, os.path.join(folder, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def restore() -> dict | None:
    """The newest checkpoint's state, or None when the run starts fresh."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_state(os.path.join(folder, STATE_FILE))


# -- PU search packs ----------------------------------------------------------------------------------


def _pack_state(saved: dict | None, ids: list[int]) -> PackState | None:
    """The checkpointed state if it belongs to exactly these candidates, or -- for a finished
    pack re-dispatched for the few candidates whose results never reached the log -- a finished
    state holding just their results. Anything else starts fresh."""
    if saved is None:
        return None
    state = PackState.from_dict(saved["pack_state"])
    known = set(state.results) | set(state.alive)
    if known == set(ids):
        return state
    if state.finished and set(ids) <= known:
        return PackState(state.rung, [], {i: state.results[i] for i in ids})
    return None


def pu_pack_worker_loop(config: dict) -> None:
    job: PackJob = config["job"]
    started = time.perf_counter()
    rank, world, device = worker_context()
    devices = assigned_devices(device)
    ids = [c["id"] for c in job.candidates]
    state = _pack_state(restore(), ids)
    resumed_from = 0 if state is None else state.rung
    train_started = time.perf_counter()

    def on_rung(state: PackState, rungs: int) -> None:
        pack_report = PackReport(
            results=[state.results[i] for i in ids if i in state.results], progress=state.rung, total=rungs,
            finished=state.finished, alive=len(state.alive), resumed_from=resumed_from,
            train_seconds=time.perf_counter() - train_started, worker_seconds=time.perf_counter() - started,
            device=devices)
        report(pack_report.to_dict(), rank, {"pack_state": state.to_dict()})

    if state is not None and state.finished:
        on_rung(state, len(job.plan.rungs))  # its results were lost on the way: say them again
        return
    run_pack(job.plan, job.pack, job.candidates, device, (rank, world), population_sync if world > 1 else None,
             state, on_rung)


# -- train-pu --workers ------------------------------------------------------------------------------


def gather_objects(obj, world: int) -> list:
    """Every worker's ``obj``, in rank order."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def fixed_mmap_threshold(size: int = 128 * 1024) -> None:
    """Large temporaries (batches, index permutations, validation chunks) are allocated and freed
    every step. glibc raises its mmap threshold as they come and go, so later ones land in its
    heap, whose freed memory it keeps: measured, a worker's resident memory grew by ~0.2 x its
    share on top of the share. A fixed threshold (glibc's initial 128 KiB) gives them back on free."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, size)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def current_rss_bytes() -> int:
    """This process's resident memory now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _read_share(job: PUTrainJob, cfg, rank: int, world: int):
    """This worker's share, or the first worker's data error on every worker (all must stop
    together: one leaving early would hang the others in the next collective)."""
    from trainers.data.pu import read_pu_share
    from trainers.errors import DataError

    rss_start = current_rss_bytes()
    started, share, error = time.perf_counter(), None, ""
    try:
        share = read_pu_share(job.train, rank, world, cfg.labelled_frac, cfg.seed, cfg.val_frac)
    except DataError as err:
        error = str(err)
    seconds = time.perf_counter() - started
    errors = [e for e in gather_objects(error, world) if e]
    stats = {"rank": rank, "rows": 0 if share is None else len(share.x), "read_seconds": seconds, "rss_start": rss_start,
             "bytes": 0 if share is None else int(share.x.nbytes)}
    return share, (errors[0] if errors else None), stats


def pu_worker_loop(config: dict) -> None:
    """``lossforge train-pu --workers``: each worker reads its share of the pool (float16 stays
    float16), all hold the few labelled positives; gradients are averaged; a report and a
    checkpoint per epoch; a restarted run continues from its last epoch."""
    from dataclasses import replace

    from trainers.losses.taylor import TaylorLoss
    from trainers.pu import build_population, evaluate_members, make_objective, prior_for, run_epochs, share_data

    fixed_mmap_threshold()
    job: PUTrainJob = config["job"]
    rank, world, device = worker_context()
    cfg = replace(job.pu, device=str(device))
    share, error, read_stats = _read_share(job, cfg, rank, world)
    if error:
        report({"data_error": error, "finished": True}, rank, None)
        return
    loss = TaylorLoss.from_dict(job.loss) if isinstance(job.loss, dict) else job.loss
    method = loss if isinstance(loss, str) else "taylor"
    gather = (lambda a: np.concatenate(gather_objects(a, world))) if world > 1 else None
    tensors, val = share_data(share, method, device, gather)
    prior = prior_for(method, cfg, share)
    pop = build_population(make_objective(loss, prior, device), [cfg.seed], share.dim, cfg, stream=rank)
    state = restore() or {}
    if "population" in state:
        pop.load_state_dict(state["population"])
    resumed_from, last = pop.epoch, [time.perf_counter()]
    sizes = {"n_train_unlabelled": len(tensors.unlabelled[0]) * world, "n_train_positive": len(tensors.x_positive),
             "n_val": len(val.labelled[0]), "n_rows": share.total}

    def worker_stats() -> list[dict]:
        return gather_objects({**read_stats, "peak_rss": peak_rss_bytes()}, world)

    def on_epoch(pop, stats, evaluations) -> None:
        now = time.perf_counter()
        metrics = {"epoch": pop.epoch, "epochs": cfg.epochs, "loss": float(stats["loss"][0]),
                   "val_fitness": evaluations[0].fitness, "epoch_seconds": now - last[0],
                   "replicas_in_sync": replicas_in_sync(list(pop.selector.parameters())),
                   "resumed_from_epoch": resumed_from, "finished": False, "workers": worker_stats(), **sizes}
        last[0] = now
        state["history"] = state.get("history", []) + [metrics]
        report(metrics, rank, {"population": pop.state_dict(), "history": state["history"]})

    if "final" not in state:
        run_epochs(pop, tensors, val, cfg, cfg.epochs, prior, sync=population_sync if world > 1 else None,
                   on_epoch=on_epoch)
        if cfg.select_epoch:
            pop.use_best_selector()
        (member,) = evaluate_members(pop, val, cfg.fitness, prior)
        state["final"] = {"status": member.status, "val_fitness": member.fitness, "threshold_logit": member.threshold,
                          "epoch_used": int(pop.best_epoch[0]) if cfg.select_epoch else pop.epoch, "prior_used": prior}
    final = {**state["final"], **sizes, "finished": True, "workers": worker_stats(), "epochs": cfg.epochs,
             "resumed_from_epoch": resumed_from}
    report(final, rank, {"population": pop.state_dict(), "history": state.get("history", []), "final": state["final"]})


# -- DPO ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def load_pairs(train: str | None, seed: int):
    """Training pairs once per worker process (the built-in task without a file)."""
    from trainers.data.pairs import read_pairs
    from trainers.dpo import default_pairs

    return default_pairs(seed)[0] if train is None else read_pairs(train)


def _dpo_prepare(cfg, train: str | None, device):
    """Every rank builds the same seeded model and the same reference values; each trains on
    its slice of every batch and gradients are averaged."""
    from dataclasses import replace

    from trainers.dpo import prepare

    cfg = replace(cfg, device=str(device))
    return cfg, prepare(cfg, load_pairs(train, cfg.seed), device)


def dpo_worker_loop(config: dict) -> None:
    """``lossforge train-dpo``: one model, a checkpoint and a report per epoch, resumable.
    Config: {"dpo": DPOConfig, "train": path | None}."""
    from trainers.dpo import Run, run_epochs
    from trainers.losses.preference import resolve_preference_loss

    started = time.perf_counter()
    rank, world, device = worker_context()
    cfg, prep = _dpo_prepare(config["dpo"], config["train"], device)
    run = Run.start(prep.model, cfg)
    state = restore()
    if state is not None:
        run.load_state_dict(state)
    resumed_from = run.epoch

    def on_epoch(run, record: dict) -> None:
        # Checked by the workers themselves and kept in the run's history (the checkpoint), so
        # the driver can tell on any cluster, shared disk or not.
        record["replicas_in_sync"] = run.history[-1]["replicas_in_sync"] = replicas_in_sync(list(run.model.parameters()))
        metrics = {**record, "best_val_agreement": run.best_agreement, "train_pairs": prep.split_sizes[0],
                   "val_pairs": prep.split_sizes[1], "truncated_pairs": prep.train.truncated + prep.val.truncated,
                   "resumed_from_epoch": resumed_from, "worker_seconds": time.perf_counter() - started,
                   "epochs": cfg.epochs}
        report(metrics, rank, run.state_dict())

    run_epochs(run, prep, resolve_preference_loss(cfg.loss), cfg, device, (rank, world),
               average_gradients if world > 1 else None, on_epoch)


def pair_worker_loop(config: dict) -> None:
    """``lossforge train-dpo --mode pair`` (and ``cross``, a judge without a cache). Caching progress is reported without a checkpoint (the
    cache on disk is its own resume point); training reports a checkpoint every
    ``checkpoint_minutes`` and at each epoch's end, so a killed run resumes mid-epoch.
    Config: {"dpo": DPOConfig, "train": path | None}."""
    from dataclasses import replace

    from trainers.judges import JUDGES
    from trainers.losses.preference import resolve_preference_loss
    from trainers.pair import PairRun, prepare_pair, run_pair_epochs

    started = time.perf_counter()
    rank, world, device = worker_context()
    cfg = replace(config["dpo"], device=str(device))
    prep = prepare_pair(cfg, load_pairs(config["train"], cfg.seed), device,
                        progress=lambda line: report({**line, "resumed_from_epoch": 0}, rank, None),
                        build=JUDGES[cfg.mode].build)
    run = PairRun.start(prep.model.judge, cfg)
    state = restore()
    if state is not None:
        run.load_state_dict(state)
    resumed = {"resumed_from_epoch": run.epoch, "resumed_from_step": run.step}
    sizes = {"train_pairs": len(prep.train), "val_pairs": len(prep.val), "epochs": cfg.epochs, "threads": torch.get_num_threads(),
             "truncated_texts": prep.train.truncated_texts + prep.val.truncated_texts, **prep.cache_stats}

    def on_epoch(run, record: dict) -> None:
        record["replicas_in_sync"] = replicas_in_sync(list(run.judge.parameters()))
        record.update(sizes)  # the same dict as run.history[-1]: metrics.json keeps it
        report({**record, **resumed, "phase": "epoch", "best_val_agreement": run.best_agreement,
                "worker_seconds": time.perf_counter() - started}, rank, run.state_dict())

    run_pair_epochs(run, prep, resolve_preference_loss(cfg.loss), cfg, device, (rank, world),
                    average_gradients if world > 1 else None,
                    progress=lambda line: report({**line, **resumed}, rank, None),
                    checkpoint=lambda run: report({"phase": "checkpoint", "epoch": run.epoch + 1, "step": run.step,
                                                   **resumed}, rank, run.state_dict()),
                    on_epoch=on_epoch)


def preference_candidates(cfg, pairs, device):
    """The mode's candidate trainer (:class:`trainers.dpo.DPOCandidates`, or pair mode's over its
    cache), prepared once: a search pack and the final report train every loss through it. In
    pair mode the search's driver has filled the cache (``PreferenceTask.before_search``); texts
    missing from it are computed here."""
    from trainers.dpo import DPOCandidates
    from trainers.judges import JUDGES
    from trainers.pair import PairCandidates

    if cfg.mode in JUDGES:
        return PairCandidates.prepare(cfg, pairs, device, JUDGES[cfg.mode].build)
    return DPOCandidates.prepare(cfg, pairs, device)


def dpo_pack_worker_loop(config: dict) -> None:
    """A DPO pack: losses of the preference Taylor family trained one after another from the same
    initial weights on data prepared once per seed (tokenised and reference values computed; in
    pair mode, the lower layers' states cached on disk, shared by every pack).

    A search pack trains its candidates on the search's seed; the re-evaluation stage
    (``plan.seeds``) trains the controls and then every elite once per fresh seed (see
    :class:`trainers.dpo.DPOPackPlan`). Transformers do not stack into one vectorised step the
    way the PU MLPs do, so a pack amortises the fixed costs (Train job start, data, tokenising,
    reference pass, cache) rather than the steps. One report (and checkpoint of every finished
    training) per training; a restarted pack skips the trainings it already finished.
    """
    from dataclasses import replace

    from trainers.dpo import taylor_pair_loss

    job: PackJob = config["job"]
    plan, started, train_seconds = job.plan, time.perf_counter(), 0.0
    rank, world, device = worker_context()
    devices = assigned_devices(device)
    seeds = plan.seeds or [plan.dpo.seed]
    losses = _paired_controls(plan) + job.candidates
    agreements: dict = (restore() or {}).get("agreements", {})  # "seed/id": best agreement, None if diverged
    pairs = load_pairs(plan.train, plan.dpo.seed)  # the data is the search's; a seed changes the split

    def say() -> None:
        results = dpo_results(plan, job.candidates, agreements)
        total = len(seeds) * len(losses) if plan.seeds else len(job.candidates)
        done = len(agreements) if plan.seeds else len(results)
        pack_report = PackReport(results, done, total, done == total, len(job.candidates) - len(results),
                                 train_seconds=train_seconds, worker_seconds=time.perf_counter() - started,
                                 unit="training" if plan.seeds else "candidate", device=devices)
        report(pack_report.to_dict(), rank, {"agreements": agreements})

    if all(f"{s}/{loss['id']}" in agreements for s in seeds for loss in losses):  # restarted after its last training
        say()
    for seed in seeds:
        todo = [loss for loss in losses if f"{seed}/{loss['id']}" not in agreements]
        trainer = preference_candidates(replace(plan.dpo, device=str(device), seed=seed), pairs, device) if todo else None
        for loss in todo:
            twin = _trained_twin(loss, losses, agreements, seed)
            if twin is not None:  # an elite that is a control's own point: trained once per seed
                agreements[f"{seed}/{loss['id']}"] = agreements[twin]
                say()
                continue
            t0 = time.perf_counter()
            run = trainer.train(taylor_pair_loss(loss["coefficients"], loss["center"]), (rank, world),
                                average_gradients if world > 1 else None)
            train_seconds += time.perf_counter() - t0
            agreements[f"{seed}/{loss['id']}"] = None if run.diverged else run.best_agreement
            say()


def _paired_controls(plan) -> list[dict]:
    """The controls a re-evaluation trains first on each seed (ids "control:NAME"); none in a search pack."""
    return [{"id": f"control:{c['name']}", **c} for c in plan.controls] if plan.seeds else []


def _trained_twin(loss: dict, losses: list[dict], agreements: dict, seed: int) -> str | None:
    """The key of a loss with the same point already trained on ``seed`` (same point, same seed:
    the same run), or None."""
    point = loss_point(loss)
    for other in losses:
        key = f"{seed}/{other['id']}"
        if other is not loss and key in agreements and same_point(point, loss_point(other)):
            return key
    return None


def dpo_results(plan, candidates: list[dict], agreements: dict) -> list[CandidateResult]:
    """Results of the candidates whose every training finished. A search pack's fitness is the
    validation agreement; a re-evaluation's the mean paired margin over the best control trained
    on the same seed (a seed whose every control diverged is compared with chance, 0.5), with
    its spread in ``details`` as :func:`search.engine.reevaluation.lower_bound` reads it."""
    seeds = plan.seeds or [plan.dpo.seed]
    controls = [c["id"] for c in _paired_controls(plan)]
    results = []
    for c in candidates:
        values = [agreements.get(f"{s}/{c['id']}", "missing") for s in seeds]
        if "missing" in values:
            continue
        if None in values:
            results.append(CandidateResult(c["id"], DIVERGED_FITNESS, "diverged"))
        elif not plan.seeds:
            results.append(CandidateResult(c["id"], values[0], "ok"))
        else:
            best = [max((agreements[f"{s}/{k}"] for k in controls if agreements.get(f"{s}/{k}") is not None), default=0.5)
                    for s in seeds]
            margins = [v - b for v, b in zip(values, best)]
            sd = float(np.std(margins, ddof=1)) if len(margins) > 1 else 0.0
            results.append(CandidateResult(c["id"], float(np.mean(margins)), "ok",
                                           {"scale": [1.0], "sd": [sd], "margins": margins, "agreements": values}))
    return results
