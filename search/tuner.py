"""The search driver: options, the results folder, Ray, the Tuner, and the final report.

Layout of a results folder ``<storage>/<name>/``:
  search.json         the options the search was started with (resume reads them back)
  evaluations.jsonl   the append-only evaluation log (source of truth)
  tune-<n>/           Ray Tune's own logs (CSV/JSON/TensorBoard), one folder per (re)start
  train/pack-<k>/     each pack's Ray Train run and checkpoints
  leaderboard.csv, best_loss.json, best_loss.txt, best_fitness.png, loss_slices.png
  final_report.json   test metrics of the best loss (and PAN), scored once after the search
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from search.evaluations import EvaluationLog
from search.report import SPEC_FILE, format_leaderboard, load_spec, write_report
from search.space import TaylorSpace, check_optimizer
from trainers.losses.seeds import taylor_point
from trainers.metrics import FITNESS_NEEDS_PRIOR, PU_FITNESS, TRUTH_FITNESS
from trainers.pu import PUConfig

DEFAULT_STORAGE = "lossforge_results"
# Ray Train blocks each report after the first for about this health-check interval (2 s by
# default); a pack reports once per epoch, so a short interval saves seconds per trial.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


@dataclass
class SearchOptions:
    name: str | None = None
    storage: str = DEFAULT_STORAGE
    train: str | None = None  # None: the built-in synthetic problem
    test: str | None = None  # scored once, for the final report only
    budget: int = 32
    optimizer: str = "TwoPointsDE"
    order: int = 2
    fitness: str = "pu_auc"
    pack: int = 8  # candidates per trial
    concurrency: int | None = None  # trials at once; None: from the cluster's resources
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    epochs: int = 10
    seeds_per_candidate: int = 1
    seed_losses: list[str] = field(default_factory=lambda: ["pan"])
    labelled_frac: float = 0.1
    prior: float | None = None
    seed: int = 0
    max_failures: int = 2  # Train worker-group restarts per pack (node loss), from the last checkpoint

    def validate(self) -> None:
        if self.budget < 1 or self.pack < 1 or self.epochs < 1 or self.seeds_per_candidate < 1:
            raise ValueError("--budget, --pack, --epochs and --seeds-per-candidate must be at least 1")
        if self.workers_per_trial < 1 or self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise ValueError("--workers-per-trial must be >= 1 and --cpus/--gpus-per-worker >= 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if self.fitness not in PU_FITNESS + TRUTH_FITNESS:
            raise ValueError(f"unknown fitness {self.fitness!r}; choose from {PU_FITNESS} (PU-only) or {TRUTH_FITNESS}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"--name must be a plain folder name, got {self.name!r}")
        TaylorSpace(order=self.order).dimension  # raises on a bad order
        check_optimizer(self.optimizer)
        for name in self.seed_losses:
            taylor_point(name, self.order)  # raises on an unknown seed loss


def results_folder(opts: SearchOptions) -> Path:
    return Path(opts.storage).expanduser().resolve() / opts.name


def _prior(opts: SearchOptions, train_table) -> float | None:
    if opts.prior is not None:
        return opts.prior
    if train_table is not None and train_table.label is not None:
        return float(train_table.label.mean())  # benchmark mode: the truth of the training data
    return 0.4 if opts.train is None else None  # the built-in problem's documented prior


def _check_data(opts: SearchOptions):
    """Read the training (and test) data in the driver first: a bad file fails before Ray starts."""
    from trainers.data.pu import make_pu_split
    from trainers.data.shards import read_table

    if opts.train is None:
        if opts.test is not None:
            raise ValueError("--test needs --train (the built-in default brings its own test split)")
        return None, None
    train = read_table(opts.train)
    make_pu_split(train, opts.labelled_frac, opts.seed)  # raises on no labelled positives etc.
    test = read_table(opts.test, need="label") if opts.test else None
    return train, test


def start_ray(address: str | None, quiet: bool = True) -> None:
    """Join ``address``, or the cluster a Ray job runs in, or start a local cluster."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"log_to_driver": not quiet}
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # A driver submitted through the Jobs API: `lossforge submit` put RAY_ENV in the job's
        # runtime environment already, and Ray refuses the same variables twice.
        ray.init(**kwargs)
        return
    kwargs["runtime_env"] = {"env_vars": dict(RAY_ENV)}
    if address:
        ray.init(address=address, **kwargs)
    else:
        os.environ.update(RAY_ENV)  # a local cluster's processes inherit the driver's environment
        ray.init(include_dashboard=False, **kwargs)


def default_concurrency(opts: SearchOptions) -> int:
    import ray

    resources = ray.cluster_resources()
    per_trial_cpu = opts.workers_per_trial * opts.cpus_per_worker
    limits = []
    if per_trial_cpu > 0:
        limits.append(int(resources.get("CPU", 1) // per_trial_cpu))
    if opts.gpus_per_worker > 0:
        limits.append(int(resources.get("GPU", 0) // (opts.workers_per_trial * opts.gpus_per_worker)))
    # An autoscaling cluster may have no room yet: one trial waits for nodes rather than none.
    return max(1, min(limits) if limits else 1)


def run_search(
    opts: SearchOptions, resume: bool = False, address: str | None = None, log=print, searcher_class=None
) -> dict:
    """Run (or resume) a search to its budget, then write the report. ``searcher_class`` lets a
    caller substitute a :class:`PackSearcher` subclass (tests use it to inject a NaN candidate)."""
    from ray import tune

    from search.searcher import PackSearcher
    from search.trial import trainable

    started = time.perf_counter()
    if opts.name is None and not resume:
        opts.name = time.strftime("search-%Y%m%d-%H%M%S")
    folder = results_folder(opts)
    if resume:
        if not (folder / SPEC_FILE).exists():
            raise FileNotFoundError(f"no search named {opts.name!r} in {folder.parent} to resume")
        saved = load_spec(folder)
        concurrency = opts.concurrency
        opts = SearchOptions(**{k: v for k, v in saved.items() if k in SearchOptions.__dataclass_fields__})
        opts.storage = str(folder.parent)
        opts.concurrency = concurrency if concurrency is not None else opts.concurrency
    opts.validate()
    if not resume and folder.exists():
        raise FileExistsError(
            f"a search named {opts.name!r} already exists in {folder}; resume it with --resume "
            f"(or `lossforge resume {opts.name}`), or pick another --name"
        )
    train_table, _ = _check_data(opts)
    prior = _prior(opts, train_table)
    if opts.fitness in FITNESS_NEEDS_PRIOR and prior is None:
        raise ValueError(f"fitness {opts.fitness} needs the class prior: pass --prior")
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        spec = asdict(opts)
        spec["train"] = None if opts.train is None else str(Path(opts.train).resolve())
        spec["test"] = None if opts.test is None else str(Path(opts.test).resolve())
        (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        opts = SearchOptions(**spec)

    start_ray(address)
    concurrency = opts.concurrency or default_concurrency(opts)
    space = TaylorSpace(order=opts.order)
    seed_prior = prior if prior is not None else 0.5
    seeds = [(n, space.to_vector(taylor_point(n, opts.order, prior=seed_prior))) for n in opts.seed_losses]
    evaluation_log = EvaluationLog(folder)
    searcher = (searcher_class or PackSearcher)(
        space, opts.optimizer, opts.budget, opts.pack, opts.pack * concurrency, opts.seed, evaluation_log,
        seed_vectors=seeds, progress=log,
    )
    packs = searcher.packs_to_run()
    log(f"search {opts.name}: {opts.budget} candidates (order {opts.order}, {space.dimension} dims, "
        f"{opts.optimizer}), {searcher.told} already evaluated; {packs} pack(s) of up to {opts.pack}, "
        f"{concurrency} at a time -> {folder}")
    if packs:
        pu = asdict(PUConfig(epochs=opts.epochs, fitness=opts.fitness, seed=opts.seed, labelled_frac=opts.labelled_frac))
        setup = {
            "order": opts.order,
            "data": {"train": opts.train, "labelled_frac": opts.labelled_frac, "seed": opts.seed, "val_frac": pu["val_frac"]},
            "pu": {k: v for k, v in pu.items() if k not in ("device", "loss", "prior")},
            "seeds": [opts.seed + j for j in range(opts.seeds_per_candidate)],
            "prior": prior if opts.fitness in FITNESS_NEEDS_PRIOR else None,
            "workers_per_trial": opts.workers_per_trial,
            "cpus_per_worker": opts.cpus_per_worker,
            "gpus_per_worker": opts.gpus_per_worker,
            "train_storage": str(folder / "train"),
            "max_failures": opts.max_failures,
        }
        attempt = 1 + sum(1 for p in folder.glob("tune-*") if p.is_dir())
        tuning_started = time.perf_counter()
        tuner = tune.Tuner(
            trainable(setup),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=packs, max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(
                name=f"tune-{attempt}",
                storage_path=str(folder),
                verbose=0,
                callbacks=[EpochProgress(log, opts.epochs)],
                # A lost node can take the trial actor itself with it: Tune re-runs the trial, whose
                # Train run (same name) continues from its newest checkpoint.
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            ),
        )
        tuner.fit()
        tuning_seconds = time.perf_counter() - tuning_started
    else:
        tuning_seconds = 0.0
    summary = write_report(folder)
    log(format_leaderboard(summary))
    summary["final"] = final_report(folder, opts, log) if summary["best"] else None
    summary.update(seconds=time.perf_counter() - started, tuning_seconds=tuning_seconds,
                   concurrency=concurrency, folder=str(folder))
    return summary


def final_report(folder: Path, opts: SearchOptions, log=print) -> dict:
    """Score the best loss (and PAN, for reference) on the test split, once, after the search."""
    from trainers.pu import load_tables, train_pu

    train, test = load_tables(opts.train, opts.test)
    if opts.train is not None and test is None:
        log("no --test given: the best loss is not scored on held-out data")
        return {}
    report = {}
    for label, loss in (("best", str(folder / "best_loss.json")), ("pan", "pan")):
        cfg = PUConfig(loss=loss, seed=opts.seed, epochs=opts.epochs, labelled_frac=opts.labelled_frac,
                       fitness=opts.fitness, prior=opts.prior)
        result = train_pu(cfg, train, test)
        report[label] = {k: result.get(k) for k in ("val_fitness", "test_f1", "test_auc", "threshold", "status")}
    (folder / "final_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log("test split (scored once, after the search): " + "  ".join(
        f"{k}: F1 {v['test_f1']:.4f} AUC {v['test_auc']:.4f}" for k, v in report.items() if v.get("test_f1") is not None))
    return report


try:
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - Ray is a dependency; keeps `report` usable without it
    _TuneCallback = object


class EpochProgress(_TuneCallback):
    """Live progress: each pack's epoch and best fitness as Train reports them."""

    def __init__(self, log, epochs: int):
        self.log, self.epochs = log, epochs

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "candidate_fitness" in result:
            running = sum(t.status == "RUNNING" for t in trials)
            self.log(f"  pack {trial.config.get('pack')}: epoch {result['epoch']}/{self.epochs}, "
                     f"best in pack {result['best_fitness']:.4f} ({running} trial(s) running)")
