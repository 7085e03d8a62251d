"""Which optimiser to search with: evaluations each needs to match random search's best of N, with
the search's own fitness (folds, paired controls, successive halving), measured side by side.

    python3 benchmarks/search_efficiency.py --n 500 [--train shards] [--seeds 2] [--json out.json]

Every optimiser asks packs of --pack candidates through the same in-process pack training a
search trial runs (trainers.pu_pack.run_pack: the same plan, so the same fitness), and is told
each pack's results. Random search runs N candidates; every other optimiser up to --max-factor
x N. Reported per optimiser: the first evaluation at which its best-so-far reaches random
search's best of N (target for the default: <= N/3), and -- because the best of N noisy values
is partly luck -- the re-evaluated fitness of its final pick: the product's own re-evaluation
stage (search.engine.reevaluation with the search's defaults: the top --reevaluate candidates and the
recommendation retrained next to the controls on fresh folds, the winner by lower confidence
bound), which is what a user gets.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from search.engine.options import SearchOptions, with_task_defaults  # noqa: E402
from search.engine.space import TaylorSpace, make_nevergrad_optimizer  # noqa: E402
from search.tasks.pu import PUSearchOptions, PUTask  # noqa: E402
from search.engine.reevaluation import choose_elites, summarise  # noqa: E402
from trainers.boundary import DIVERGED_FITNESS  # noqa: E402
from trainers.pu_pack import run_pack  # noqa: E402

# (name in Nevergrad's registry or a configured one, how to build it)
OPTIMIZERS = ["TwoPointsDE", "CMA-pop16", "NGOpt", "TBPSA", "NoisyDE", "PSO"]


def build_optimizer(name: str, space: TaylorSpace, budget: int, workers: int, seed: int):
    """``workers`` is what a search tells the optimiser: the candidates it can have in flight
    (pack x concurrent trials), which sets DE's population (max(30, workers)) among others."""
    import nevergrad as ng

    if name.startswith("CMA-pop"):
        cma = ng.optimizers.ParametrizedCMA(popsize=int(name[len("CMA-pop"):]))
        opt = cma(parametrization=space.parametrization(seed), budget=budget, num_workers=workers)
        return opt
    return make_nevergrad_optimizer(name, space, budget, workers, seed)


def run_optimizer(name: str, budget: int, pack: int, workers: int, plan, space: TaylorSpace, seed: int):
    """(best-so-far curve, optimiser, every (vector, fitness) told)."""
    opt = build_optimizer(name, space, budget, workers, seed)
    history, told = [], []
    while len(history) < budget:
        asked = [opt.ask() for _ in range(min(pack, budget - len(history)))]
        state = run_pack(plan, len(history) // pack, [{"id": i, **space.candidate(c.value)} for i, c in enumerate(asked)])
        for i, c in enumerate(asked):
            fitness = state.results[i].fitness
            opt.tell(c, -fitness)
            history.append(fitness)
            told.append((np.asarray(c.value), fitness))
    return np.maximum.accumulate(history), opt, told


def final_pick(opt, told, plan, space: TaylorSpace, opts: SearchOptions) -> float:
    """Re-evaluated fitness of what a user gets: the product's own re-evaluation stage
    (search.engine.reevaluation, the search's defaults) on this optimiser's run -- its elites and
    recommendation retrained next to the controls on fresh folds and seeds, the winner by lower
    confidence bound."""
    ok = [{"id": i, "source": "optimizer", "vector": list(v), "search_fitness": f}
          for i, (v, f) in enumerate(told) if f > DIVERGED_FITNESS]
    chosen = choose_elites(ok, opt.provide_recommendation().value, plan.controls, opts.task_options.reevaluate, len(told))
    stage = plan.for_reevaluation(opts.task_options, opts.epochs)
    state = run_pack(stage, 0, [{"id": e["id"], **space.candidate(e["vector"])} for e in chosen])
    record = summarise(chosen, list(state.results.values()), stage.members_per_unit)
    return next(r["reevaluated_fitness"] for r in record["rows"] if r["id"] == record["winner"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="random search's budget")
    p.add_argument("--max-factor", type=float, default=1.0, help="other optimisers' budget, as a multiple of N")
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    p.add_argument("--pack", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=2,
                   help="trials a search runs at once (2 on 2 CPUs): the optimiser is told pack x concurrency workers")
    p.add_argument("--train", help="Parquet shards (default: the built-in problem)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=2, help="repeat every search with this many seeds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = PUTask()
    opts = with_task_defaults(task, SearchOptions(name="efficiency", train=[args.train] if args.train else [],
                                                  epochs=args.epochs, task_options=PUSearchOptions()))
    plan, space = task.plan(opts, task.read_inputs(opts)), TaylorSpace(opts.order)
    print(f"{args.train or 'built-in problem'}, order {space.order} ({space.dimension} dims), {args.epochs} epochs, "
          f"rungs {plan.rungs}, folds {plan.folds}, controls {[c['name'] for c in plan.controls]}, packs of {args.pack}")
    table, workers = {}, args.pack * args.concurrency
    for seed in range(args.seeds):
        t = time.perf_counter()
        random_curve, random_opt, random_told = run_optimizer("RandomSearch", args.n, args.pack, workers, plan, space, seed)
        target = random_curve[-1]
        table.setdefault("RandomSearch", []).append({"needed": args.n, "best": float(target),
                                                     "pick": final_pick(random_opt, random_told, plan, space, opts)})
        print(f"seed {seed}: random best of {args.n} = {target:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
        for name in args.optimizers.split(","):
            t = time.perf_counter()
            curve, opt, told = run_optimizer(name, int(args.max_factor * args.n), args.pack, workers, plan, space, seed)
            hit = np.flatnonzero(curve >= target)
            row = {"needed": int(hit[0]) + 1 if len(hit) else None, "best": float(curve[-1]),
                   "pick": final_pick(opt, told, plan, space, opts)}
            table.setdefault(name, []).append(row)
            print(f"  {name:<12} best {row['best']:.4f}, reached random's best at {row['needed'] or 'never'}, "
                  f"re-evaluated pick {row['pick']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    print_summary(table, args.n)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


def print_summary(table: dict, n: int) -> None:
    print(f"\n{'optimizer':<14} {'evals to random best (median)':>30} {'best (mean)':>12} {'re-evaluated pick (mean)':>25}")
    for name, rows in table.items():
        needed = [r["needed"] for r in rows]
        reached = [x for x in needed if x is not None]
        med = f"{np.median(reached):.0f}" if len(reached) == len(needed) else f"{len(reached)}/{len(needed)} reached"
        print(f"{name:<14} {med:>30} {np.mean([r['best'] for r in rows]):>12.4f} {np.mean([r['pick'] for r in rows]):>25.4f}")
    print(f"(target for the default: random search's best of {n} within {n // 3} evaluations)")


if __name__ == "__main__":
    main()
