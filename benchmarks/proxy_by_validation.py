"""Can a fitness tell good losses apart, by validation size and labelling? And what does a small
labelled validation set buy the hand-made losses on its own?

    python3 benchmarks/proxy_by_validation.py --data ../shared/data/pu/sms --labellings scar sar-group \
        --candidates 48 --seeds 7 --json sms.json

For every data set, labelling and seed: 1,000 random training rows are set aside as a labelled
pool (removed from training, as ``--val-size`` does), the rest is PU-labelled, and the Taylor
candidates (proxy_validity's: around pan, naive and upu at three noise scales) and the baselines
train for ``--epochs`` with every epoch's scores kept on the PU validation fold, the pool and the
test split. Each validation size N (0 = PU only) then uses the first N pool rows (one seeded
order, so the sets are nested) exactly as the product does: epoch selection and fitness by the
member metric (PU: --pu-fitness; N > 0: --val-metric on the N rows), the threshold by the PU
rule (N = 0) or the shrunk F1-optimal rule on the N rows. Training is shared by every N, so the
comparison between sizes is paired; every N trains without the whole pool.

Cross-fitted: a loss's *fitness* is its mean over the first ``--fitness-seeds`` seeds, its *test
F1* the mean over the others, so training noise shared by both cannot make a proxy look good.
Printed per (set, labelling, N): Spearman rho(fitness, test F1) overall and in the top half by
fitness; beside it, how far noise lets that rho go (the same rho with the fitness seeds' own test
F1 as the fitness, test F1's split-half rho, the top half's spread against one loss's seed sd); the
regret of the top pick (best test F1 among all losses minus the pick's), and the table "pick vs best baseline" (test F1 mean +- sd over the test seeds); and per baseline the test
F1 with its PU threshold, with the N-row threshold alone, and with N-row epoch selection too.
``--table-from out.json`` re-prints a saved run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.proxy_validity import draw_candidates, spearman  # noqa: E402
from trainers.config import PUConfig  # noqa: E402
from trainers.data.pu import PUData, draw_labelled_set, split_entropy  # noqa: E402
from trainers.data.shards import read_table  # noqa: E402
from trainers.data.synthetic import synthetic_pu_problem  # noqa: E402
from trainers.metrics import (  # noqa: E402
    classification_metrics, labelled_fitness, labelled_threshold, pu_fitness, shared_threshold,
)
from trainers.pu import PU_BASELINES as BASELINES  # noqa: E402
from trainers.pu import Objective, TrainTensors, build_population, selector_scores, train_epoch  # noqa: E402

POOL = 1000
SIZES = (0, 50, 100, 200, 500, 1000)


@dataclass
class Trace:
    """Every member's scores after every epoch: [members, epochs, rows] on three row sets."""

    names: list[str]
    pu_val: np.ndarray
    pool: np.ndarray
    test: np.ndarray
    pu_labelled: np.ndarray  # bool, PU validation rows
    pool_y: np.ndarray
    test_y: np.ndarray


def train_traced(objective: Objective, k: int, data: PUData, fold, x_pool, x_test, cfg: PUConfig, seed: int) -> list:
    """[per epoch] (pu_val, pool, test) scores [k, rows] of a population of ``k`` members."""
    pop = build_population(objective, [seed] * k, data.dim, cfg)
    tensors = TrainTensors.from_folds(data, [fold], objective.method, cfg.device)
    x_val = data.x[fold.val]
    out = []
    for _ in range(cfg.epochs):
        train_epoch(pop, tensors, cfg)
        out.append([selector_scores(pop, x) for x in (x_val, x_pool, x_test)])
    return out


def trace_seed(train, test, labelling: str, seed: int, candidates: list[dict], cfg: PUConfig) -> Trace:
    rest, pool = draw_labelled_set(train, POOL, seed)
    data = PUData.from_table(rest, cfg.labelled_frac, seed, labelling)
    fold = data.fold(cfg.val_frac, split_entropy(seed))
    runs = [train_traced(Objective.taylor_candidates(candidates), len(candidates), data, fold, pool.x, test.x, cfg, seed)]
    for method in BASELINES:
        runs.append(train_traced(Objective(method, prior=data.true_prior), 1, data, fold, pool.x, test.x, cfg, seed))
    stacked = [np.concatenate([np.stack([e[i] for e in run], axis=1) for run in runs]) for i in range(3)]
    names = [f"cand{c['id']}" for c in candidates] + list(BASELINES)
    return Trace(names, *stacked, fold.val_labelled, pool.y.astype(bool), test.label.astype(bool))


def cached_trace(cache: str | None, key: str, make) -> Trace:
    """``make()``, saved to (or loaded from) ``cache/key.npz``: analyses re-run without training."""
    if cache is None:
        return make()
    path = Path(cache) / f"{key.replace('/', '_').replace(' ', '')}.npz"
    if path.exists():
        z = np.load(path)
        return Trace(list(z["names"]), *(z[k] for k in ("pu_val", "pool", "test", "pu_labelled", "pool_y", "test_y")))
    trace = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, names=np.array(trace.names), pu_val=trace.pu_val, pool=trace.pool, test=trace.test,
             pu_labelled=trace.pu_labelled, pool_y=trace.pool_y, test_y=trace.test_y)
    return trace


def condition(trace: Trace, n: int, args, select_on_pool: bool = True, threshold_on_pool: bool = True) -> tuple:
    """(fitness [members], test F1 [members]) under validation size ``n`` (0: PU only)."""
    members, epochs = trace.pu_val.shape[:2]
    fitness, f1 = np.full(members, np.nan), np.full(members, np.nan)
    pool_y = trace.pool_y[:n]
    for m in range(members):
        best, best_value = None, -np.inf
        for e in range(epochs):
            pu, pool = trace.pu_val[m, e], trace.pool[m, e, :n]
            if not (np.isfinite(pu).all() and np.isfinite(trace.test[m, e]).all()):
                continue
            pu_threshold = shared_threshold(pu, trace.pu_labelled)
            threshold = labelled_threshold(pool, pool_y, pu_threshold) if n and threshold_on_pool else pu_threshold
            value = (labelled_fitness(args.val_metric, pool, pool_y, threshold) if n and select_on_pool
                     else pu_fitness(args.pu_fitness, pu, trace.pu_labelled))
            if value > best_value:
                best, best_value = (e, threshold), value
        if best is not None:
            fitness[m] = best_value
            f1[m] = classification_metrics(trace.test[m, best[0]], trace.test_y, best[1])["f1"]
    return fitness, f1


def top_half(fitness: np.ndarray) -> np.ndarray:
    """Indices of the top half by ``fitness`` (at least 3), best first; NaN fitness last."""
    order = np.argsort(-np.nan_to_num(fitness, nan=-np.inf))
    return order[: max(3, len(order) // 2)]


def top_half_rho(fitness: np.ndarray, f1: np.ndarray) -> float:
    """Spearman rho(fitness, test F1) among the members in the top half by ``fitness``."""
    top = top_half(fitness)
    return spearman(fitness[top], f1[top])


def summarise(traces: list[Trace], n: int, args) -> dict:
    """rho, top-half rho, regret and the pick vs the best baseline, cross-fitted over seeds."""
    fit_seeds, test_seeds = traces[: args.fitness_seeds], traces[args.fitness_seeds:]
    fit_runs = [condition(t, n, args) for t in fit_seeds]
    fitness = np.nanmean([fit for fit, _ in fit_runs], axis=0)
    # The same epochs and thresholds scored on test: a "fitness" that read the test labels of its
    # own training runs, to show how far the fitness seeds' training noise alone lets rho go.
    fit_seed_test_f1 = np.nanmean([f1 for _, f1 in fit_runs], axis=0)
    f1_runs = np.array([condition(t, n, args)[1] for t in test_seeds])
    f1 = np.nanmean(f1_runs, axis=0)
    names = traces[0].names
    top = top_half(fitness)  # best first
    cands = [i for i, name in enumerate(names) if name.startswith("cand")]
    pick = max(cands, key=lambda i: np.nan_to_num(fitness[i], nan=-np.inf))
    base = [i for i, name in enumerate(names) if not name.startswith("cand")]
    best_base = max(base, key=lambda i: np.nan_to_num(f1[i], nan=-np.inf))  # on test: generous to the baselines
    baseline_pick = max(base, key=lambda i: np.nan_to_num(fitness[i], nan=-np.inf))  # what the fitness would ship
    return {
        "n": n, "rho": spearman(fitness, f1), "rho_top_half": spearman(fitness[top], f1[top]),
        "regret": float(np.nanmax(f1) - f1[top[0]]), "pick": names[pick],
        "pick_f1": [float(v) for v in f1_runs[:, pick]], "best_baseline": names[best_base],
        "best_baseline_f1": [float(v) for v in f1_runs[:, best_base]],
        "fitness_baseline": names[baseline_pick], "fitness_baseline_f1": [float(v) for v in f1_runs[:, baseline_pick]],
        "oracle_candidate_f1": float(np.nanmax(f1[cands])),
        **test_noise(f1_runs, top),
        "rho_top_half_test_as_fitness": top_half_rho(fit_seed_test_f1, f1),
        "names": names, "fitness": [float(v) for v in fitness], "f1": [float(v) for v in f1],
    }


def test_noise(f1_runs: np.ndarray, top: np.ndarray) -> dict:
    """How far test F1 itself can rank the top half: its split-half Spearman rho there (the test
    seeds' first half against the second), the spread (sd) of the members' mean test F1 there, and
    one member's sd over the test seeds. Where the spread is not above the seed sd over sqrt(seeds),
    no fitness can show a high top-half rho against these test seeds. None with one test seed."""
    if len(f1_runs) < 2:
        return {"test_split_half_rho_top": None, "top_half_spread": None, "seed_sd": None}
    half = len(f1_runs) // 2
    first, second = np.nanmean(f1_runs[:half], axis=0), np.nanmean(f1_runs[half:], axis=0)
    return {"test_split_half_rho_top": spearman(first[top], second[top]),
            "top_half_spread": float(np.nanstd(np.nanmean(f1_runs, axis=0)[top])),
            "seed_sd": float(np.nanmean(np.nanstd(f1_runs[:, top], axis=0, ddof=1)))}


def threshold_gain(traces: list[Trace], n: int, args) -> dict:
    """Per baseline, test F1 (mean over every seed): PU rule; N-row threshold alone; N-row
    threshold and epoch selection."""
    names, out = traces[0].names, {}
    rows = [[condition(t, n, args, select_on_pool=s, threshold_on_pool=th)[1] for t in traces]
            for s, th in ((False, False), (False, True), (True, True))]
    for i, name in enumerate(names):
        if not name.startswith("cand"):
            out[name] = [float(np.nanmean(np.array(r)[:, i])) for r in rows]
    return out


SHRINKS = (0.0, 5.0, 10.0, 20.0, 50.0, float("inf"))


def shrink_study(traces: list[Trace], sizes=(50, 100, 200, 500)) -> dict:
    """The threshold rule's shrinkage, judged without test labels: every member at its PU-selected
    epoch, the threshold from the first N pool rows, F1 on the pool rows after N (labelled rows the
    run never used). {N: {shrink: mean F1 over members and seeds}}."""
    out = {}
    for n in sizes:
        row = {}
        for shrink in SHRINKS:
            f1s = []
            for t in traces:
                for m in range(t.pu_val.shape[0]):
                    e = int(np.argmax([pu_fitness("pu_auc", t.pu_val[m, k], t.pu_labelled) if np.isfinite(t.pu_val[m, k]).all()
                                       else -np.inf for k in range(t.pu_val.shape[1])]))
                    if not np.isfinite(t.pool[m, e]).all():
                        continue
                    pool, y = t.pool[m, e], t.pool_y
                    pu_threshold = shared_threshold(t.pu_val[m, e], t.pu_labelled)
                    threshold = (pu_threshold if shrink == float("inf")
                                 else labelled_threshold(pool[:n], y[:n], pu_threshold, shrink))
                    f1s.append(classification_metrics(pool[n:], y[n:], threshold)["f1"])
            row[str(shrink)] = float(np.mean(f1s))
        out[n] = row
    return out


def noise_cells(row: dict) -> str:
    if row.get("seed_sd") is None:  # one test seed, or a JSON from before these columns
        return "- | - | -"
    return (f"{row['rho_top_half_test_as_fitness']:.2f} | {row['test_split_half_rho_top']:.2f} | "
            f"{100 * row['top_half_spread']:.1f} / {100 * row['seed_sd']:.1f}")


def print_tables(results: dict) -> None:
    for key, r in results.items():
        print(f"\n## {key}")
        print("| N | rho(F1) | top-half rho | regret | pick: test F1 | best baseline (test) | baseline the fitness picks "
              "| top-half rho, test F1 of the fitness seeds as fitness | test F1's own split-half top-half rho "
              "| top-half spread / seed sd (F1) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for s in r["sizes"]:
            ms = lambda v: f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1):.1f}" if len(v) > 1 else f"{100 * np.mean(v):.1f}"
            print(f"| {s['n'] or 'PU only'} | {s['rho']:.2f} | {s['rho_top_half']:.2f} | {100 * s['regret']:.1f} | "
                  f"{ms(s['pick_f1'])} ({s['pick']}) | {ms(s['best_baseline_f1'])} ({s['best_baseline']}) | "
                  f"{ms(s['fitness_baseline_f1'])} ({s['fitness_baseline']}) | {noise_cells(s)} |")
        if "shrink" in r:
            print("\nthreshold shrinkage (F1 on unused pool rows; inf = the PU rule alone): " + "; ".join(
                f"N={n}: " + " ".join(f"{k}:{100 * v:.1f}" for k, v in row.items()) for n, row in r["shrink"].items()))
        print("\nthreshold alone (test F1, all seeds): baseline: PU rule -> N-row threshold -> N-row threshold + epoch")
        for n, gains in r["threshold_gain"].items():
            print(f"  N={n}: " + "; ".join(f"{b} {100 * a:.1f} -> {100 * t:.1f} -> {100 * e:.1f}" for b, (a, t, e) in gains.items()))


def load(path: str | None):
    if path is None:
        return synthetic_pu_problem()
    return read_table(f"{path}/train.parquet"), read_table(f"{path}/test.parquet", need="label")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=[None], help="folders with train.parquet and test.parquet (default: built-in)")
    p.add_argument("--labellings", nargs="+", default=["scar", "sar-group"])
    p.add_argument("--candidates", type=int, default=48)
    p.add_argument("--seeds", type=int, default=7)
    p.add_argument("--fitness-seeds", type=int, default=2, help="the first seeds give fitness, the rest test F1")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--order", type=int, default=2, help="the Taylor order of the candidates (the product's default: 2)")
    p.add_argument("--pu-fitness", default="pu_pauc")
    p.add_argument("--val-metrics", nargs="+", default=["auc", "f1"], help="the labelled set's fitness, each in turn")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--json")
    p.add_argument("--traces", help="a folder to keep every run's scores in (and reuse them from)")
    p.add_argument("--table-from")
    args = p.parse_args()
    if args.table_from:
        print_tables(json.loads(Path(args.table_from).read_text()))
        return
    if args.seeds <= args.fitness_seeds:
        p.error(f"--seeds must exceed --fitness-seeds ({args.fitness_seeds}): the rest give test F1")
    cfg = PUConfig(epochs=args.epochs)
    candidates = draw_candidates(args.candidates, seed=0, order=args.order)
    family = f"{args.candidates}" if args.order == 2 else f"{args.candidates}o{args.order}"  # order 2 keeps old trace names
    results = {}
    for path in args.data:
        train, test = load(path)
        for labelling in args.labellings:
            started = time.perf_counter()
            name = Path(path).name if path else "built-in"
            traces = [cached_trace(args.traces, f"{name}-{labelling}-{family}-{args.epochs}-{s}",
                                   lambda s=s: trace_seed(train, test, labelling, s, candidates, cfg))
                      for s in range(args.seeds)]
            for metric in args.val_metrics:
                args.val_metric = metric
                key = f"{name} / {labelling} / labelled {metric}"
                results[key] = {"sizes": [summarise(traces, n, args) for n in args.sizes],
                                "threshold_gain": {n: threshold_gain(traces, n, args) for n in args.sizes if n},
                                "shrink": shrink_study(traces),
                                "seconds": time.perf_counter() - started}
                print_tables({key: results[key]})
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
