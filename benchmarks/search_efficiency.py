"""How many evaluations Nevergrad needs to match random search's best of N, on the default problem.

Both searches ask the same kind of candidates (the Taylor space of search/space.py) and score
them with the same in-process pack training as a search trial (trainers.pu.train_pack), so the
comparison is about the optimiser alone. Random search runs N candidates; the optimiser runs up
to --max-factor x N and we report the first evaluation at which its best reaches random
search's best.

    python benchmarks/search_efficiency.py --n 64 [--optimizer TwoPointsDE] [--seeds 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from search.space import TaylorSpace, make_optimizer  # noqa: E402
from search.tuner import SearchOptions  # noqa: E402
from trainers.loop import load_split  # noqa: E402
from trainers.losses.seeds import taylor_point  # noqa: E402
from trainers.pu import PUConfig, train_pack  # noqa: E402


def run_optimizer(name: str, budget: int, pack: int, split, cfg, space: TaylorSpace, seed: int, seed_pan: bool):
    """Best-so-far fitness after each evaluation (asks a pack, trains it, tells it)."""
    opt = make_optimizer(name, space, budget, pack, seed)
    if seed_pan:
        opt.suggest(space.to_vector(taylor_point("pan", space.order)))
    history = []
    while len(history) < budget:
        asked = [opt.ask() for _ in range(min(pack, budget - len(history)))]
        candidates = [space.candidate(c.value) for c in asked]
        for c, (fitness, _) in zip(asked, train_pack(split, candidates, [cfg.seed], cfg)):
            opt.tell(c, -fitness)
            history.append(fitness)
    return np.maximum.accumulate(history)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="random search's budget")
    p.add_argument("--max-factor", type=float, default=2.0)
    p.add_argument("--optimizer", default=SearchOptions.optimizer)
    p.add_argument("--pack", type=int, default=16)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=2, help="repeat both searches with this many seeds")
    args = p.parse_args()
    cfg = PUConfig(epochs=args.epochs)
    split = load_split(None, cfg.labelled_frac, cfg.seed, cfg.val_frac)
    space = TaylorSpace(SearchOptions.order)
    print(f"default problem, order {space.order} ({space.dimension} dims), {args.epochs} epochs per candidate")
    needed = []
    for seed in range(args.seeds):
        t = time.perf_counter()
        random_best = run_optimizer("RandomSearch", args.n, args.pack, split, cfg, space, seed, seed_pan=False)[-1]
        curve = run_optimizer(args.optimizer, int(args.max_factor * args.n), args.pack, split, cfg, space, seed, seed_pan=False)
        hit = np.flatnonzero(curve >= random_best)
        n_needed = int(hit[0]) + 1 if len(hit) else None
        needed.append(n_needed)
        print(f"seed {seed}: random best of {args.n} = {random_best:.4f}; {args.optimizer} best of {len(curve)} = "
              f"{curve[-1]:.4f}, reached random's best at evaluation {n_needed or 'never'} ({time.perf_counter() - t:.0f} s)")
    ok = [n for n in needed if n is not None]
    summary = f"{np.median(ok):.0f}" if ok else f">{int(args.max_factor * args.n)}"
    print(f"budget {args.optimizer} needs to match random search's best of {args.n}: median {summary} "
          f"({len(ok)}/{len(needed)} seeds matched within {int(args.max_factor * args.n)})")


if __name__ == "__main__":
    main()
