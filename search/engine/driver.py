"""The search driver: a short generic orchestrator over a :class:`search.tasks.Task` (passed in,
never looked up here).

Layout of a results folder ``<storage>/<name>/``:
  search.json         the options the search was started with (resume reads them back)
  evaluations.jsonl   the append-only evaluation log (source of truth)
  tune-<n>/           Ray Tune's own logs (CSV/JSON/TensorBoard), one folder per (re)start
  train/pack-<k>/     each pack's Ray Train run and checkpoints (train/reevaluation/: the elites')
  reevaluation.json, reevaluation.csv   the elites retrained beside the controls on fresh folds (pu) or seeds (dpo)
  leaderboard.csv, best_loss.json, best_loss.txt, best_fitness.png, loss_slices.png
  final_report.json   test metrics of the best loss (and PAN / DPO), scored once after the search
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import replace

from search.session.ray_session import RAY_ENV, RunFolder, Scaling, default_concurrency, start_ray, start_run  # noqa: F401 - RAY_ENV re-exported
from search.engine.evaluations import EvaluationLog
from search.session.lock import release_all
from search.engine.options import SearchOptions, check_name, with_task_defaults
from trainers.data.storage import normalise
from search.engine.report import SPEC_FILE, format_leaderboard, write_report
from search.engine.resume import check_resume, record_start, resumed_runs
from trainers.files import write_json

FINAL_REPORT = "final_report.json"


def auto_pack(task, opts: SearchOptions, concurrency: int) -> int:
    """--pack auto: spread the budget over one round of concurrent trials, within the task's cap.

    Each Train job costs ~10-15 s to start whatever its size, so the fewer and fuller the packs,
    the more of each trial is training; one round of ``concurrency`` packs keeps every slot busy.
    """
    return max(1, min(task.pack_cap(opts), math.ceil(opts.budget / concurrency)))


def prepare_search(task, opts: SearchOptions, resume: bool):
    """Validate, read the data, check the log -- then (new searches) write search.json. Raises
    on any bad input before anything is written or Ray starts. Returns the options with the
    task's defaults and what ``task.read_inputs`` read. A resumed search's ``opts`` are the ones
    it was started with (``search.tasks.load_search``)."""
    check_name(opts.name)
    if task.name != opts.task:
        raise ValueError(f"options of --task {opts.task} given to the {task.name} task")
    folder = RunFolder(opts.folder(), SPEC_FILE, f"`lossforge resume {opts.name}` (or --resume)")

    def read_inputs(spec: dict):
        if resume:  # a corrupt log or an edited search.json fails now, naming the field, not after Ray started
            check_resume(opts, EvaluationLog(folder.path), folder.spec_path, lambda: task.space(opts.order).dimension)
        task.validate(opts)
        space = task.space(opts.order)  # raises on a bad order
        from search.engine.space import check_optimizer

        check_optimizer(opts.optimizer)
        for name in opts.seed_losses:
            space.seed_point(name)  # raises on an unknown seed loss
        return task.read_inputs(opts)

    opts.validate_common()
    opts = with_task_defaults(task, opts)
    if not resume:
        opts = replace(opts, train=[normalise(p) for p in opts.train], test=[normalise(p) for p in opts.test])
    _, inputs = start_run(folder, resume, spec_of(opts), read_inputs, opts.train + opts.test, "--storage/--name",
                          resumed_runs(folder.path) if resume else None)
    log = EvaluationLog(folder.path)
    if not resume or not log.events():  # a kill between writing search.json and this line left no start record
        record_start(log, opts)
    return opts, inputs


def spec_of(opts: SearchOptions) -> dict:
    """search.json: the options, without where the folder lies (a moved folder resumes in place)."""
    return {k: v for k, v in opts.to_dict().items() if k != "storage"}


def run_search(task, opts: SearchOptions, resume: bool = False, address: str | None = None, log=print,
               searcher_class=None) -> dict:
    """Run (or resume) a search of ``task`` (a :class:`search.tasks.Task`) to its budget, then
    re-evaluate (PU), report and score once on test. ``searcher_class`` lets a caller substitute
    a :class:`PackSearcher` subclass (tests use it to inject a NaN candidate)."""
    try:
        summary = _run_search(task, opts, resume, address, log, searcher_class)
    except KeyboardInterrupt:
        # Ctrl-C / SIGTERM: the run's Ray workers may still be writing checkpoints into the folder
        # until Ray is stopped, so the lock stays held; the command line releases it after that.
        raise
    except BaseException:
        release_all()
        raise
    release_all()
    return summary


def _run_search(task, opts: SearchOptions, resume: bool, address: str | None, log, searcher_class) -> dict:
    started = time.perf_counter()
    if opts.name is None and not resume:
        opts = replace(opts, name=time.strftime("search-%Y%m%d-%H%M%S"))
    opts, inputs = prepare_search(task, opts, resume)
    folder = opts.folder()
    evaluation_log = EvaluationLog(folder)
    if dropped := evaluation_log.repair():
        log(f"the evaluation log ended in a torn line ({dropped} bytes, kept in {evaluation_log.path.name}.torn-*): "
            "cut off; its pack will report again")
    start_ray(address)
    # Resolved once: the trials and the re-evaluation after them share the same slots.
    opts = replace(opts, concurrency=opts.concurrency or default_concurrency(opts))
    concurrency = opts.concurrency
    pack = opts.pack or auto_pack(task, opts, concurrency)
    plan = task.plan(opts, inputs)
    searcher = _searcher(opts, task, inputs, evaluation_log, pack, concurrency, log, searcher_class)
    tuning_seconds = run_trials(opts, task, plan, searcher, pack, concurrency, log)
    task.after_search(folder, opts, plan, searcher, log)
    summary = write_report(folder, task, opts)
    log(format_leaderboard(summary))
    summary["final"] = task.final_report(folder, opts, log) if summary["best"] else None
    if summary["final"]:
        write_json(folder / FINAL_REPORT, summary["final"])
    summary.update(seconds=time.perf_counter() - started, tuning_seconds=tuning_seconds,
                   concurrency=concurrency, pack=pack, folder=str(folder))
    return summary


def _searcher(opts, task, inputs, evaluation_log, pack, concurrency, log, searcher_class):
    from search.engine.searcher import PackSearcher

    space = task.space(opts.order)
    seeds = task.seed_vectors(opts, inputs)
    return (searcher_class or PackSearcher)(space, opts.optimizer, opts.budget, pack, pack * concurrency, opts.seed,
                                            evaluation_log, seed_vectors=seeds, progress=log)


def run_trials(opts: SearchOptions, task, plan, searcher, pack: int, concurrency: int, log) -> float:
    """Tune runs the packs the budget still needs; returns the seconds it took."""
    from ray import tune

    from search.session.progress import PackProgress
    from search.engine.trial import TrialSetup, trainable

    folder = opts.folder()
    packs = searcher.packs_to_run()
    log(f"search {opts.name} ({opts.task}): {opts.budget} candidates (order {opts.order}, "
        f"{task.space(opts.order).dimension} dims, {opts.optimizer}), {searcher.told} already evaluated; "
        f"{packs} pack(s) of up to {pack}{'' if opts.pack else ' (auto)'}, {concurrency} at a time -> {folder}")
    if not packs:
        return 0.0
    task.before_search(opts, log)
    scaling = Scaling(opts.workers_per_trial, opts.cpus_per_worker, opts.gpus_per_worker, opts.max_failures)
    setup = TrialSetup(task.space(opts.order), task.worker_loop(), plan, scaling, str(folder / "train"))
    attempt = 1 + sum(1 for p in folder.glob("tune-*") if p.is_dir())
    # Tune's newer console output prints its banner and a TensorBoard path inside Ray's temp folder
    # whatever the verbosity; the classic output honours verbose=0. Tune's logs stay in tune-N/.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = time.perf_counter()
    tune.Tuner(
        trainable(setup),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=packs, max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(
            name=f"tune-{attempt}",
            storage_path=str(folder),
            verbose=0,
            callbacks=[PackProgress(log)],
            # A lost node can take the trial actor itself with it: Tune re-runs the trial, whose
            # Train run (same name) continues from its newest checkpoint.
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        ),
    ).fit()
    return time.perf_counter() - started
