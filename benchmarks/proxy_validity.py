"""Can a search's fitness be trusted? Rank correlation between the fitness a search computes and
the test F1/AUC the same losses reach, for candidates around the hand-made losses and the six
baselines.

    python3 benchmarks/proxy_validity.py --train ../shared/data/pu/rt/train.parquet \
        --test ../shared/data/pu/rt/test.parquet --candidates 64 --seeds 3 --json rt.json

1. Candidates: Taylor points of pan, naive and upu (order 2) perturbed by Gaussian noise at three
   scales (near, mid, far), drawn with a fixed seed, plus the six baselines.
2. Search fitness, exactly as a search computes it: packs of --pack candidates, each with its own
   folds, the controls (pan, naive) on the same folds and seeds, every candidate trained to the
   full --epochs (no halving here, so every one gets its full-fidelity value; the halving's own
   fidelity is reported as rho between each rung's fitness and the full one). One row per member
   metric (pu_auc, pu_pauc, lee_liu), raw (mean over folds) and paired (margin over the best
   control). The baselines get the same: trained on pack 0's folds and seeds.
3. Test F1/AUC: the pu_quality harness (train_pu's recipe, --test-epochs, seeds 0..--seeds-1,
   the shared threshold), scored once on --test.
Prints Spearman rho (fitness vs test F1), rho (fitness vs test AUC), rho (fitness vs test F1)
among the top half of the losses by that fitness (the oracle left out: can it rank *good* losses,
which is what picks a search's winner?) and the test-F1 regret of each fitness's top pick (best
test F1 among all minus the top pick's; the oracle is never the pick). ``--table-from out.json``
re-prints the table of an earlier run without training anything.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from search.engine.space import TaylorSpace  # noqa: E402
from trainers.config import PUConfig  # noqa: E402
from trainers.data.pu import make_pu_split, split_entropy  # noqa: E402
from trainers.metrics import classification_metrics  # noqa: E402
from trainers.pu import (  # noqa: E402
    BASELINES, Objective, TrainTensors, ValidationSets, build_population, evaluate_members, load_tables, run_epochs,
    selector_scores, train_pu,
)
from trainers.pu_pack import SEARCH_STREAM, PUPackPlan, load_dataset, run_pack  # noqa: E402

METRICS = ("pu_auc", "pu_pauc", "lee_liu")
SCALES = (0.25, 1.0, 3.0)


def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    ra, rb = (np.argsort(np.argsort(v[keep])) for v in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1]) if keep.sum() > 2 else float("nan")


def draw_candidates(n: int, seed: int, order: int = 2) -> list[dict]:
    """Taylor candidates of ``order`` around pan, naive and upu at three noise scales (clipped to the box)."""
    space, rng = TaylorSpace(order), np.random.default_rng(seed)
    centres = [space.seed_point(name) for name in ("pan", "naive", "upu")]
    out = []
    for i in range(n):
        centre = centres[i % 3]
        scale = SCALES[(i // 3) % len(SCALES)]
        noise = rng.normal(size=centre.shape) * scale * np.r_[np.maximum(np.abs(centre[:-4]), 0.5), np.full(4, 0.1)]
        vector = np.clip(centre + noise, *space.parametrization(0).bounds)
        out.append({"id": i, **space.candidate(vector)})
    return out


def search_fitness(candidates, plan: PUPackPlan, pack_size: int) -> dict:
    """{metric: {"raw": [...], "paired": [...], "rungs": {epochs: [paired...]}}} per candidate;
    every candidate goes through every rung (keep = 1), so each rung's value is known."""
    out = {}
    for metric in METRICS:
        cfg = replace(plan.pu, fitness=metric)
        raw, paired, rungs, controls = {}, {}, {}, {}

        def record(state, n):
            for cid, r in state.results.items():
                rungs.setdefault(r.details.get("epochs"), {})[cid] = r.details["margin"][0] if r.status == "ok" else np.nan

        for pack, start in enumerate(range(0, len(candidates), pack_size)):
            state = run_pack(replace(plan, pu=cfg), pack, candidates[start:start + pack_size], on_rung=record)
            for cid, r in state.results.items():
                ok = r.status == "ok"
                raw[cid] = r.details["metric"][0] if ok else np.nan
                paired[cid] = r.details["margin"][0] if ok else np.nan
            controls[pack] = next(r.details["control"][0] for r in state.results.values() if "control" in r.details)
        ids = [c["id"] for c in candidates]
        out[metric] = {"raw": [raw[i] for i in ids], "paired": [paired[i] for i in ids], "control_pack0": controls[0],
                       "rungs": {e: [v.get(i, np.nan) for i in ids] for e, v in rungs.items() if e}}
        print(f"  search fitness {metric}: done", flush=True)
    return out


def baseline_fitness(plan: PUPackPlan, method: str, metric: str) -> float:
    """A baseline's mean member fitness on pack 0's folds and seeds (the controls' own)."""
    cfg = replace(plan.pu, fitness=metric)
    data = load_dataset(plan.datasets[0], replace(cfg, labelled_frac=plan.labelled_frac, seed=plan.seed))
    folds = [data.fold(cfg.val_frac, split_entropy(plan.seed, SEARCH_STREAM, 0, f)) for f in range(plan.folds)]
    members = plan.member_seeds()
    prior = data.true_prior
    pop = build_population(Objective(method, prior=prior), [s for _, s in members], data.dim, cfg,
                           member_fold=[f for f, _ in members])
    run_epochs(pop, TrainTensors.from_folds(data, folds, method), ValidationSets.from_folds(data, folds), cfg, cfg.epochs)
    return float(np.mean(pop.best_fitness))


def test_metrics(candidates, train, test, seeds: int, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """[candidates, seeds] test F1 and AUC, the pu_quality harness, packed per seed."""
    f1, auc = np.full((len(candidates), seeds), np.nan), np.full((len(candidates), seeds), np.nan)
    for s in range(seeds):
        cfg = PUConfig(epochs=epochs, seed=s)
        split = make_pu_split(train, cfg.labelled_frac, s, cfg.val_frac)
        for start in range(0, len(candidates), 64):
            chunk = candidates[start:start + 64]
            pop = build_population(Objective.taylor_candidates(chunk), [s] * len(chunk), split.dim, cfg)
            val = ValidationSets.from_split(split)
            run_epochs(pop, TrainTensors.from_split(split, "taylor"), val, cfg, cfg.epochs)
            pop.use_best_selector()
            members = evaluate_members(pop, val, cfg.fitness, None)
            scores = selector_scores(pop, test.x)
            for k, m in enumerate(members):
                if m.status == "ok":
                    metrics = classification_metrics(scores[k], test.label, m.threshold)
                    f1[start + k, s], auc[start + k, s] = metrics["f1"], metrics["auc"]
        print(f"  test metrics seed {s}: done", flush=True)
    return f1, auc


def baseline_test(method: str, train, test, seeds: int, epochs: int) -> tuple[float, float]:
    runs = [train_pu(PUConfig(loss=method, seed=s, epochs=epochs), train, test) for s in range(seeds)]
    return (float(np.mean([r.get("test_f1", np.nan) for r in runs])), float(np.mean([r.get("test_auc", np.nan) for r in runs])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train")
    p.add_argument("--test")
    p.add_argument("--table-from", help="a --json of an earlier run: print its table again, train nothing")
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10, help="search epochs")
    p.add_argument("--test-epochs", type=int, default=PUConfig.epochs)
    p.add_argument("--pack", type=int, default=16, help="candidates per pack (packs have different folds)")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    if args.table_from:
        saved = json.loads(Path(args.table_from).read_text())
        rows = summarise(saved["fitness"], np.asarray(saved["test_f1"]), np.asarray(saved["test_auc"]), saved["names"])
        return print_table(args.table_from, rows, len(saved["names"]), float("nan"))
    if not (args.train and args.test):
        p.error("--train and --test are required (or --table-from)")
    torch.set_num_threads(args.threads)
    started = time.time()
    train, test = load_tables(args.train, args.test)
    candidates = draw_candidates(args.candidates, seed=0)
    space = TaylorSpace(2)
    controls = [{"name": n, **space.candidate(space.seed_point(n))} for n in ("pan", "naive")]
    plan = PUPackPlan(datasets=[args.train], labelled_frac=0.1, seed=0, pu=PUConfig(epochs=args.epochs), priors=[None],
                      folds=args.folds, controls=controls, rungs=sorted({1, 3, args.epochs}), keep=1.0)
    fitness = search_fitness(candidates, plan, args.pack)
    f1, auc = test_metrics(candidates, train, test, args.seeds, args.test_epochs)
    f1_mean, auc_mean = np.nanmean(f1, axis=1), np.nanmean(auc, axis=1)
    names = [f"taylor-{i}" for i in range(len(candidates))]
    for method in BASELINES:
        bf1, bauc = baseline_test(method, train, test, args.seeds, args.test_epochs)
        f1_mean, auc_mean, names = np.r_[f1_mean, bf1], np.r_[auc_mean, bauc], names + [method]
        for metric in METRICS:
            value = baseline_fitness(plan, method, metric)
            fitness[metric]["raw"].append(value)
            fitness[metric]["paired"].append(value - fitness[metric]["control_pack0"])
    rows = summarise(fitness, f1_mean, auc_mean, names)
    print_table(args.train, rows, len(names), time.time() - started)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "names": names, "test_f1": f1_mean.tolist(),
                                               "test_auc": auc_mean.tolist(), "fitness": fitness}, indent=2, default=float))


def summarise(fitness: dict, f1: np.ndarray, auc: np.ndarray, names: list[str]) -> list[dict]:
    rows = []
    pickable = np.asarray(names) != "oracle"  # a reference that trains on the truth: no search can pick it
    best_f1 = float(np.nanmax(f1[pickable]))
    for metric in METRICS:  # how well a low rung ranks the candidates as the full epochs do (halving's fidelity)
        full = np.asarray(fitness[metric]["paired"][: len(next(iter(fitness[metric]["rungs"].values())))], float)
        for epochs, values in sorted(fitness[metric]["rungs"].items(), key=lambda item: int(item[0])):
            rows.append({"fitness": f"paired {metric} @ {epochs} ep", "rho_f1": spearman(values, f1[: len(values)]),
                         "rho_auc": spearman(values, full), "top_pick": "(rho_auc column: vs full-epoch fitness)",
                         "rho_f1_top": float("nan"), "regret_f1": float("nan")})
    for metric in METRICS:
        for kind in ("raw", "paired"):
            values = np.asarray(fitness[metric][kind], dtype=float)
            top = int(np.nanargmax(np.where(pickable, values, np.nan)))
            rows.append({"fitness": f"{kind} {metric}", "rho_f1": spearman(values, f1), "rho_auc": spearman(values, auc),
                         "rho_f1_top": spearman(*top_half(values, f1, pickable)),
                         "top_pick": names[top], "regret_f1": 100 * (best_f1 - f1[top])})
    return rows


def top_half(values: np.ndarray, f1: np.ndarray, pickable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fitness, test F1) of the pickable losses (the oracle left out) in the top half by fitness."""
    keep = np.isfinite(values) & pickable
    keep &= values >= np.median(values[keep])
    return values[keep], f1[keep]


def print_table(train: str, rows: list[dict], n: int, seconds: float) -> None:
    print(f"# {train}: {n} losses (Taylor candidates + baselines), {seconds / 60:.0f} min")
    print(f"{'fitness':<22} {'rho(F1)':>8} {'rho(AUC)':>9} {'rho(F1) top half':>17} {'regret F1':>10}  top pick")
    for r in rows:
        print(f"{r['fitness']:<22} {r['rho_f1']:>8.3f} {r['rho_auc']:>9.3f} {r['rho_f1_top']:>17.3f} "
              f"{r['regret_f1']:>10.2f}  {r['top_pick']}")


if __name__ == "__main__":
    main()
