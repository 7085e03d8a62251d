"""PU methods side by side: mean +- sd test F1 and AUC over seeds, same harness, same models.

    python benchmarks/pu_baselines.py --train ../shared/data/pu/sms/train.parquet \
        --test ../shared/data/pu/sms/test.parquet --seeds 5 [--methods naive,nnpu] [--loss FILE|zoo:NAME ...]

Without --train it runs on the built-in synthetic problem. Each seed draws its own PU labelling
and validation split; the threshold comes from the shared PU rule; the test split is scored once.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainers.config import LABELLING_HELP, LABELLINGS, VAL_SIZE_HELP  # noqa: E402
from trainers.data.pu import draw_labelled_set  # noqa: E402
from trainers.losses.seeds import NEEDS_PRIOR  # noqa: E402
from trainers.pu import BASELINES, PUConfig, default_data, load_tables, train_pu  # noqa: E402


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def estimated_prior(train, val_size: int, seed: int) -> float:
    """The positive share of the rows ``--val-size`` draws for ``seed`` (the same rows the run
    validates on): the prior a user's --val would give nnPU/uPU in place of the truth."""
    labelled = draw_labelled_set(train if train is not None else default_data()[0], val_size, seed)[1]
    return labelled.y.mean().item()


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train")
    parser.add_argument("--test")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + seeds - 1 (skip the seed a search drew its labelling with)")
    parser.add_argument("--methods", default=",".join(BASELINES), help="comma-separated baselines (empty for none)")
    parser.add_argument("--loss", action="append", default=[], help="a Taylor loss file or zoo:NAME (repeatable)")
    parser.add_argument("--labelled-frac", type=float, default=0.1)
    parser.add_argument("--labelling", default="scar", choices=LABELLINGS, help=LABELLING_HELP)
    parser.add_argument("--val-size", type=int, default=0,
                        help=VAL_SIZE_HELP + " (epoch selection, fitness and threshold for every method)")
    parser.add_argument("--prior-from-val", action="store_true",
                        help="give upu/nnpu the positive share of the --val-size rows (what a user without the truth "
                             "gets from --val) instead of the true prior")
    parser.add_argument("--epochs", type=int, default=PUConfig.epochs)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", help="also write {method: {f1_mean, f1_sd, auc_mean, auc_sd, ...}}")
    args = parser.parse_args(argv)
    if args.prior_from_val and not args.val_size:
        parser.error("--prior-from-val estimates the prior from the --val-size rows: pass --val-size")
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load_tables(args.train, args.test)
    methods = [m for m in args.methods.split(",") if m] + args.loss
    table = {}
    name = args.train or "built-in synthetic"
    print(f"# {name}: labelled_frac {args.labelled_frac}, labelling {args.labelling}, val_size {args.val_size}, "
          f"{args.seeds} seeds, {args.epochs} epochs", flush=True)
    print(f"{'method':<24} {'test F1':>14} {'test AUC':>14} {'val fitness':>12} {'s/run':>6}", flush=True)
    for method in methods:
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            cfg = PUConfig(loss=method, seed=seed, epochs=args.epochs, labelled_frac=args.labelled_frac,
                           labelling=args.labelling, val_size=args.val_size,
                           prior=estimated_prior(train, args.val_size, seed) if args.prior_from_val else None)
            runs.append(train_pu(cfg, train, test))
        ok = [r for r in runs if r["status"] == "ok"]
        f1, f1_sd = mean_sd([100 * r["test_f1"] for r in ok]) if ok else (float("nan"), float("nan"))
        auc, auc_sd = mean_sd([100 * r["test_auc"] for r in ok]) if ok else (float("nan"), float("nan"))
        fit, _ = mean_sd([r["val_fitness"] for r in ok]) if ok else (float("nan"), 0)
        secs = statistics.fmean(r["seconds"] for r in runs)
        if args.prior_from_val and method in NEEDS_PRIOR:
            priors = ", ".join(f"{r['prior_used']:.3f}" for r in runs)
            print(f"  {method}: priors used (from the labelled rows) {priors}", flush=True)
        label = method if method in BASELINES else runs[0]["loss"]
        if method not in BASELINES and label in BASELINES:  # a search exported a hand-made loss: its own row
            label = f"exported:{label}"
        table[label] = {"f1_mean": f1, "f1_sd": f1_sd, "auc_mean": auc, "auc_sd": auc_sd,
                        "val_fitness_mean": fit, "runs_ok": len(ok), "runs": len(runs), "seconds_per_run": secs}
        print(f"{label:<24} {f1:>7.1f} ± {f1_sd:<4.1f} {auc:>7.1f} ± {auc_sd:<4.1f} {fit:>12.4f} {secs:>6.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return table


if __name__ == "__main__":
    run()
