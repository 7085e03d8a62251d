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
from dataclasses import asdict, dataclass
from pathlib import Path

from search.evaluations import EvaluationLog
from search.report import SPEC_FILE, format_leaderboard, load_spec, write_report
from search.space import TASKS, check_optimizer, space_for
from trainers.metrics import FITNESS_NEEDS_PRIOR, PU_FITNESS, TRUTH_FITNESS
from trainers.pu import PUConfig

DEFAULT_STORAGE = "lossforge_results"
# Ray Train blocks each report after the first for about this health-check interval (2 s by
# default); a pack reports once per epoch, so a short interval saves seconds per trial.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


# What a task's options default to (None in SearchOptions means "the task's default").
TASK_DEFAULTS = {
    "pu": {"fitness": "pu_auc", "epochs": 10, "seed_losses": ["pan"]},
    # DPO candidates train a transformer one after another, so a pack is slower per candidate.
    "dpo": {"fitness": "val_agreement", "epochs": 3, "seed_losses": ["dpo"]},
}
DPO_FITNESS = ("val_agreement",)


@dataclass
class SearchOptions:
    name: str | None = None
    task: str = "pu"  # pu: the selector/discriminator Taylor family; dpo: the preference Taylor family
    storage: str = DEFAULT_STORAGE
    train: str | None = None  # None: the built-in synthetic problem
    test: str | None = None  # scored once, for the final report only
    budget: int = 32
    optimizer: str = "TwoPointsDE"
    order: int = 2
    fitness: str | None = None  # None: the task's (pu_auc, val_agreement)
    pack: int | None = None  # candidates per trial; None ("auto"): see auto_pack
    concurrency: int | None = None  # trials at once; None: from the cluster's resources
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    epochs: int | None = None  # None: the task's (10 for pu, 3 for dpo)
    seeds_per_candidate: int = 1
    seed_losses: list[str] | None = None  # None: the task's (pan for pu, dpo for dpo)
    labelled_frac: float = 0.1
    prior: float | None = None
    seed: int = 0
    max_failures: int = 2  # Train worker-group restarts per pack (node loss), from the last checkpoint
    # dpo only
    mode: str = "encoder"
    model: str | None = None  # local Hugging Face folder; None: the built-in tiny model
    max_pairs: int | None = None  # a seeded sample of the training pairs

    def __post_init__(self):
        for key, value in TASK_DEFAULTS.get(self.task, {}).items():
            if getattr(self, key) is None:
                setattr(self, key, list(value) if isinstance(value, list) else value)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {TASKS}, got {self.task!r}")
        if self.budget < 1 or (self.pack is not None and self.pack < 1) or self.epochs < 1 or self.seeds_per_candidate < 1:
            raise ValueError("--budget, --pack, --epochs and --seeds-per-candidate must be at least 1")
        if self.workers_per_trial < 1 or self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise ValueError("--workers-per-trial must be >= 1 and --cpus/--gpus-per-worker >= 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if self.task == "pu" and self.fitness not in PU_FITNESS + TRUTH_FITNESS:
            raise ValueError(f"unknown fitness {self.fitness!r}; choose from {PU_FITNESS} (PU-only) or {TRUTH_FITNESS}")
        if self.task == "dpo":
            if self.fitness not in DPO_FITNESS:
                raise ValueError(f"unknown fitness {self.fitness!r} for --task dpo; choose from {DPO_FITNESS}")
            if self.seeds_per_candidate != 1:
                raise ValueError("--seeds-per-candidate is for --task pu (DPO candidates train one model each)")
            self.dpo_config().validate()
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"--name must be a plain folder name, got {self.name!r}")
        space = space_for(self.task, self.order)  # raises on a bad order
        check_optimizer(self.optimizer)
        for name in self.seed_losses:
            space.seed_point(name)  # raises on an unknown seed loss

    def dpo_config(self):
        from trainers.dpo import DPOConfig

        return DPOConfig(mode=self.mode, model=self.model, epochs=self.epochs, seed=self.seed, max_pairs=self.max_pairs)


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
    if opts.task == "dpo":
        from trainers.data.pairs import read_pairs

        return read_pairs(opts.train), read_pairs(opts.test) if opts.test else None
    train = read_table(opts.train)
    make_pu_split(train, opts.labelled_frac, opts.seed)  # raises on no labelled positives etc.
    test = read_table(opts.test, need="label") if opts.test else None
    return train, test


_STARTED_HERE = []  # True once start_ray connected this process (not a caller's own ray.init)


def ray_started_here() -> bool:
    return bool(_STARTED_HERE)


def start_ray(address: str | None, quiet: bool = True) -> None:
    """Join ``address``, or the cluster a Ray job runs in, or start a local cluster."""
    import ray

    if ray.is_initialized():
        return
    _STARTED_HERE.append(True)
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


def stop_ray(timeout: float = 30.0) -> bool:
    """Disconnect from Ray within ``timeout`` seconds; False if it did not finish in time.

    After a node of the cluster died, a driver's disconnect could hang for minutes (seen in the
    node-loss test: the search had finished and written its report 6 minutes earlier). The
    command's work is on disk by then, so the CLI may exit without waiting for it.
    """
    import threading

    import ray

    if not ray.is_initialized():
        return True
    done = threading.Event()

    def shutdown():
        try:
            ray.shutdown()
        finally:
            done.set()

    threading.Thread(target=shutdown, name="ray-shutdown", daemon=True).start()
    return done.wait(timeout)


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


# Members (candidates x seeds) one PU pack may stack. On a CPU a pack's step costs about K
# single steps, so past a few dozen members bigger packs stop saving anything but keep the
# optimiser waiting; a GPU takes far more members per step. Memory is not the limit at these
# sizes (a member of the default problem's selector/discriminator pair, with AdamW state, is
# about 3 MB).
AUTO_PACK_MEMBERS = {"cpu": 64, "gpu": 256}
AUTO_PACK_DPO = 16  # DPO packs train their candidates one after another


def auto_pack(opts: SearchOptions, concurrency: int) -> int:
    """--pack auto: spread the budget over one round of concurrent trials, within a cap.

    Each Train job costs ~10-15 s to start whatever its size, so the fewer and fuller the packs,
    the more of each trial is training; one round of ``concurrency`` packs keeps every slot busy.
    """
    if opts.task == "dpo":
        cap = AUTO_PACK_DPO
    else:
        cap = max(1, AUTO_PACK_MEMBERS["gpu" if opts.gpus_per_worker > 0 else "cpu"] // opts.seeds_per_candidate)
    return max(1, min(cap, -(-opts.budget // concurrency)))


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
    prior = _prior(opts, train_table) if opts.task == "pu" else None
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
    pack = opts.pack or auto_pack(opts, concurrency)
    space = space_for(opts.task, opts.order)
    seed_prior = prior if prior is not None else 0.5
    seeds = [(n, space.seed_point(n, prior=seed_prior)) for n in opts.seed_losses]
    evaluation_log = EvaluationLog(folder)
    searcher = (searcher_class or PackSearcher)(
        space, opts.optimizer, opts.budget, pack, pack * concurrency, opts.seed, evaluation_log,
        seed_vectors=seeds, progress=log,
    )
    packs = searcher.packs_to_run()
    log(f"search {opts.name} ({opts.task}): {opts.budget} candidates (order {opts.order}, {space.dimension} dims, "
        f"{opts.optimizer}), {searcher.told} already evaluated; {packs} pack(s) of up to {pack}{'' if opts.pack else ' (auto)'}, "
        f"{concurrency} at a time -> {folder}")
    if packs:
        setup = {
            "task": opts.task,
            "order": opts.order,
            "workers_per_trial": opts.workers_per_trial,
            "cpus_per_worker": opts.cpus_per_worker,
            "gpus_per_worker": opts.gpus_per_worker,
            "train_storage": str(folder / "train"),
            "max_failures": opts.max_failures,
        }
        if opts.task == "pu":
            pu = asdict(PUConfig(epochs=opts.epochs, fitness=opts.fitness, seed=opts.seed, labelled_frac=opts.labelled_frac))
            setup.update({
                "data": {"train": opts.train, "labelled_frac": opts.labelled_frac, "seed": opts.seed, "val_frac": pu["val_frac"]},
                "pu": {k: v for k, v in pu.items() if k not in ("device", "loss", "prior")},
                "seeds": [opts.seed + j for j in range(opts.seeds_per_candidate)],
                "prior": prior if opts.fitness in FITNESS_NEEDS_PRIOR else None,
            })
        else:
            setup.update({"train": opts.train, "dpo": {k: v for k, v in asdict(opts.dpo_config()).items() if k != "device"}})
        attempt = 1 + sum(1 for p in folder.glob("tune-*") if p.is_dir())
        tuning_started = time.perf_counter()
        tuner = tune.Tuner(
            trainable(setup),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=packs, max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(
                name=f"tune-{attempt}",
                storage_path=str(folder),
                verbose=0,
                callbacks=[EpochProgress(log, opts.epochs if opts.task == "pu" else pack, opts.task)],
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
                   concurrency=concurrency, pack=pack, folder=str(folder))
    return summary


def final_report(folder: Path, opts: SearchOptions, log=print) -> dict:
    """Score the best loss (and PAN, for reference) on the test split, once, after the search."""
    if opts.task == "dpo":
        return final_dpo_report(folder, opts, log)
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


def final_dpo_report(folder: Path, opts: SearchOptions, log=print) -> dict:
    """Train the best loss and plain DPO with the search's settings, score both on the test pairs."""
    from trainers.data.pairs import read_pairs
    from trainers.dpo import default_pairs, train_dpo
    from trainers.losses.preference_taylor import PreferenceTaylorLoss

    if opts.train is None:
        train, test = default_pairs(opts.seed)
    else:
        train, test = read_pairs(opts.train), read_pairs(opts.test) if opts.test else None
    if test is None:
        log("no --test given: the best loss is not scored on held-out data")
        return {}
    report = {}
    for label, loss in (("best", PreferenceTaylorLoss.load(folder / "best_loss.json")), ("dpo", None)):
        cfg = opts.dpo_config()
        result = train_dpo(cfg, train, test, loss=loss)
        report[label] = {"val_agreement": result["val_agreement"], "status": result["status"],
                         **{f"test_{k}": v for k, v in result.get("test", {}).items() if k in ("agreement", "agreement_lc", "brier")}}
    (folder / "final_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log("test pairs (scored once, after the search): " + "  ".join(
        f"{k}: agreement {v['test_agreement']:.4f} (length-controlled {v['test_agreement_lc']:.4f})"
        for k, v in report.items() if v.get("test_agreement") is not None))
    return report


try:
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - Ray is a dependency; keeps `report` usable without it
    _TuneCallback = object


class EpochProgress(_TuneCallback):
    """Live progress: each pack's epoch and best fitness as Train reports them."""

    def __init__(self, log, steps: int, task: str = "pu"):
        self.log, self.steps = log, steps
        self.unit = "epoch" if task == "pu" else "candidate"  # a DPO pack trains its candidates in turn

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "candidate_fitness" in result:
            running = sum(t.status == "RUNNING" for t in trials)
            self.log(f"  pack {trial.config.get('pack')}: {self.unit} {result['epoch']}/{self.steps}, "
                     f"best in pack {result['best_fitness']:.4f} ({running} trial(s) running)")
