"""The task interface: everything that differs between one kind of search and another.

A :class:`Task` owns its options dataclass, defaults and validation, reading (and so checking)
its data, the loss family's space, the pack-size cap, the plan every pack trains under and the
worker loop that runs it, the progress unit, what happens after the budget (PU: re-evaluating
the elites), the final report and the plot of the best loss. ``search.tuner.run_search`` is
generic over it. A new task is one new class here and a line in :data:`TASKS`.

    driver (run_search) --TrialSetup--> trial (search.trial) --PackJob--> worker loop
          ^                                                                 |
          +--------------- searcher <-- PackReport (via Tune) --------------+
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from search.options import PreferenceSearchOptions, PUSearchOptions, SearchOptions
from trainers.errors import UsageError

Log = Callable[[str], None]


@dataclass
class TaskInputs:
    """What reading the data told the driver (kept small: workers read the data themselves)."""

    priors: list[float | None]  # PU: per training set, the class prior where known
    samples: list = field(default_factory=list)  # PU --sample-rows: per training set, the sample to write


class Task:
    name: str
    unit: str  # what a pack's progress counts
    options_class: type
    default_epochs: int
    default_seed_losses: list[str]

    def space(self, order: int):
        raise NotImplementedError

    def validate(self, opts: SearchOptions) -> None:
        """Task-specific checks (the common ones are SearchOptions.validate_common)."""

    def smoke(self, opts: SearchOptions) -> SearchOptions:
        """``--smoke-test``: the task's settings for a run of about a minute."""
        raise NotImplementedError

    def read_inputs(self, opts: SearchOptions) -> TaskInputs:
        raise NotImplementedError

    def pack_cap(self, opts: SearchOptions) -> int:
        raise NotImplementedError

    def plan(self, opts: SearchOptions, inputs: TaskInputs):
        raise NotImplementedError

    def plan_from_dict(self, d: dict):
        raise NotImplementedError

    def worker_loop(self):
        raise NotImplementedError

    def after_search(self, folder: Path, opts: SearchOptions, plan, searcher, log: Log) -> None:
        """Work after the budget is spent and before the report (default: none)."""

    def final_report(self, folder: Path, opts: SearchOptions, log: Log) -> dict:
        raise NotImplementedError

    def plot_best(self, best, path: Path) -> None:
        raise NotImplementedError


def with_task_defaults(opts: SearchOptions) -> SearchOptions:
    task = get_task(opts.task)
    return replace(opts, epochs=opts.epochs if opts.epochs is not None else task.default_epochs,
                   seed_losses=list(opts.seed_losses) if opts.seed_losses is not None else list(task.default_seed_losses))


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UsageError(f"--task must be one of {tuple(TASKS)}, got {name!r}")
    return TASKS[name]


# -- PU ------------------------------------------------------------------------------------------

# Members (candidates x folds x seeds) one PU pack may stack. On a CPU a pack's step costs about
# K single steps, so past ~100 members bigger packs stop saving anything but keep the optimiser
# waiting; a GPU takes far more members per step. Memory is not the limit at these sizes (a
# member of the default problem's selector/discriminator pair, with AdamW state, is ~3 MB).
AUTO_PACK_MEMBERS = {"cpu": 128, "gpu": 512}
BUILTIN_PRIOR = 0.4  # the built-in problem's documented prior


class PUTask(Task):
    name, unit, options_class = "pu", "rung", PUSearchOptions
    default_epochs, default_seed_losses = 10, ["pan"]

    def space(self, order: int):
        from search.space import TaylorSpace

        return TaylorSpace(order=order)

    def validate(self, opts: SearchOptions) -> None:
        o: PUSearchOptions = opts.task_options
        o.validate(opts.epochs)
        from trainers.losses.seeds import SEED_FUNCTIONS

        for name in o.controls:
            if name not in SEED_FUNCTIONS:
                raise UsageError(f"--controls: no hand-made loss {name!r}; choose from {sorted(SEED_FUNCTIONS)}")
        if o.val is not None and len(opts.train) != 1:
            raise UsageError("--val is a labelled validation set for one --train; with several, use --val-size")
        if len(opts.train) > 1 and o.folds * o.seeds_per_candidate < 2:
            raise UsageError("a multi-data-set search puts margins in noise units: it needs --folds x --seeds-per-candidate >= 2")

    def smoke(self, opts: SearchOptions) -> SearchOptions:
        small = replace(opts.task_options, rungs=[1], reevaluate=2, reevaluation_folds=2, reevaluation_seeds=1)
        return replace(opts, epochs=2, task_options=small)

    def read_inputs(self, opts: SearchOptions) -> TaskInputs:
        """Read every training set (or its sample) and test set now: a bad file fails before
        anything is written."""
        from trainers.config import FITNESS_NEEDS_PRIOR
        from trainers.data.pu import PUData
        from trainers.data.shards import read_table

        o: PUSearchOptions = opts.task_options
        priors, samples = [], []
        if not opts.train:
            priors.append(o.prior if o.prior is not None else BUILTIN_PRIOR)
        for i, source in enumerate(opts.train):
            table = _training_table(opts, i)
            samples.append(table if o.sample_rows is not None else None)
            val = read_table(o.val, need="label") if o.val else None
            data = PUData.from_table(table, o.labelled_frac, opts.seed, o.labelling, o.val_size, val)
            if opts.test:
                test = read_table(opts.test[i], need="label")
                if test.dim != data.dim:
                    raise UsageError(f"{opts.test[i]}: test embeddings have dimension {test.dim}, {source} has {data.dim}")
            priors.append(o.prior if o.prior is not None else data.true_prior)
        if o.fitness in FITNESS_NEEDS_PRIOR and any(p is None for p in priors):
            raise UsageError(f"fitness {o.fitness} needs the class prior: pass --prior")
        return TaskInputs(priors, samples)

    def pack_cap(self, opts: SearchOptions) -> int:
        o: PUSearchOptions = opts.task_options
        members = AUTO_PACK_MEMBERS["gpu" if opts.gpus_per_worker > 0 else "cpu"]
        return max(1, members // (o.folds * o.seeds_per_candidate))

    def plan(self, opts: SearchOptions, inputs: TaskInputs):
        from trainers.config import FITNESS_NEEDS_PRIOR, PUConfig
        from trainers.pu_pack import PUPackPlan

        o: PUSearchOptions = opts.task_options
        space = self.space(opts.order)
        controls = [{"name": n, **space.candidate(space.seed_point(n, prior=_seed_prior(inputs)))} for n in o.controls]
        for path, sample in zip(training_sources(opts), inputs.samples):
            if sample is not None and not Path(path).exists():
                from trainers.data.shards import table_to_arrow
                from trainers.data.storage import write_parquet

                write_parquet(table_to_arrow(sample), path)
        return PUPackPlan(
            datasets=training_sources(opts),
            labelled_frac=o.labelled_frac,
            seed=opts.seed,
            pu=PUConfig(epochs=opts.epochs, seed=opts.seed, **o.labelling_fields()),
            priors=inputs.priors if o.fitness in FITNESS_NEEDS_PRIOR else [None] * len(inputs.priors),
            folds=o.folds,
            seeds_per_candidate=o.seeds_per_candidate,
            controls=controls,
            rungs=o.rung_epochs(opts.epochs),
            keep=o.keep,
        )

    def plan_from_dict(self, d: dict):
        from trainers.pu_pack import PUPackPlan

        return PUPackPlan.from_dict(d)

    def worker_loop(self):
        from trainers.loop import pu_pack_worker_loop

        return pu_pack_worker_loop

    def after_search(self, folder: Path, opts: SearchOptions, plan, searcher, log: Log) -> None:
        from search.reevaluation import reevaluate_elites

        if opts.task_options.reevaluate > 0:
            reevaluate_elites(folder, opts, plan, searcher, log)

    def final_report(self, folder: Path, opts: SearchOptions, log: Log) -> dict:
        from search.final import final_pu_report

        return final_pu_report(folder, opts, log)

    def plot_best(self, best, path: Path) -> None:
        from search.report import plot_taylor_slices

        plot_taylor_slices(best, path)


def sample_path(opts: SearchOptions, i: int) -> Path:
    return opts.folder() / f"sample-{i}.parquet"


def training_sources(opts: SearchOptions) -> list[str | None]:
    """What a PU search's packs (and its final report) train on: each --train, or with
    --sample-rows its sample in the results folder; the built-in problem without --train."""
    if not opts.train:
        return [None]
    if opts.task_options.sample_rows is None:
        return list(opts.train)
    return [str(sample_path(opts, i)) for i in range(len(opts.train))]


def _training_table(opts: SearchOptions, i: int):
    """--train number ``i`` (read whole), or its stratified sample -- drawn once, then read back
    from the results folder (resume)."""
    from trainers.data.pu import stratified_sample
    from trainers.data.shards import read_table

    n = opts.task_options.sample_rows
    if n is None:
        return read_table(opts.train[i])
    if sample_path(opts, i).exists():
        return read_table(sample_path(opts, i))
    return stratified_sample(opts.train[i], n, opts.seed)


def _seed_prior(inputs: TaskInputs) -> float:
    known = [p for p in inputs.priors if p is not None]
    return sum(known) / len(known) if known else 0.5


# -- DPO ------------------------------------------------------------------------------------------


class PreferenceTask(Task):
    name, unit, options_class = "dpo", "candidate", PreferenceSearchOptions
    # DPO candidates train a transformer one after another, so a pack is slower per candidate.
    default_epochs, default_seed_losses = 3, ["dpo"]
    pack_candidates = 16

    def space(self, order: int):
        from search.space import PreferenceTaylorSpace

        return PreferenceTaylorSpace(order=order)

    def dpo_config(self, opts: SearchOptions):
        from trainers.config import DPOConfig

        o: PreferenceSearchOptions = opts.task_options
        return DPOConfig(mode=o.mode, model=o.model, epochs=opts.epochs, seed=opts.seed, max_pairs=o.max_pairs)

    def validate(self, opts: SearchOptions) -> None:
        opts.task_options.validate(opts.epochs)
        if len(opts.train) > 1:
            raise UsageError("--task dpo takes one --train")
        self.dpo_config(opts).validate()

    def smoke(self, opts: SearchOptions) -> SearchOptions:
        return replace(opts, epochs=1, task_options=replace(opts.task_options, max_pairs=600))

    def read_inputs(self, opts: SearchOptions) -> TaskInputs:
        from trainers.data.pairs import read_pairs
        from trainers.models.preference import check_model_folder

        if opts.task_options.model is not None:
            check_model_folder(opts.task_options.model, opts.task_options.mode)
        if opts.train:
            read_pairs(opts.train[0])
        if opts.test:
            read_pairs(opts.test[0])
        return TaskInputs(priors=[])

    def pack_cap(self, opts: SearchOptions) -> int:
        return self.pack_candidates

    def plan(self, opts: SearchOptions, inputs: TaskInputs):
        from trainers.dpo import DPOPackPlan

        return DPOPackPlan(train=opts.train[0] if opts.train else None, dpo=self.dpo_config(opts))

    def plan_from_dict(self, d: dict):
        from trainers.config import DPOConfig
        from trainers.dpo import DPOPackPlan

        return DPOPackPlan(d["train"], DPOConfig(**d["dpo"]))

    def worker_loop(self):
        from trainers.loop import dpo_pack_worker_loop

        return dpo_pack_worker_loop

    def final_report(self, folder: Path, opts: SearchOptions, log: Log) -> dict:
        from search.final import final_dpo_report

        return final_dpo_report(folder, opts, self.dpo_config(opts), log)

    def plot_best(self, best, path: Path) -> None:
        from search.report import plot_preference_loss

        plot_preference_loss(best, path)


TASKS: dict[str, Task] = {"pu": PUTask(), "dpo": PreferenceTask()}


def auto_pack(opts: SearchOptions, concurrency: int) -> int:
    """--pack auto: spread the budget over one round of concurrent trials, within the task's cap.

    Each Train job costs ~10-15 s to start whatever its size, so the fewer and fuller the packs,
    the more of each trial is training; one round of ``concurrency`` packs keeps every slot busy.
    """
    return max(1, min(get_task(opts.task).pack_cap(opts), math.ceil(opts.budget / concurrency)))
