"""Candidates per hour for the same candidates, data and epochs, three ways, measured in one run:

  (a) bare:  no Ray, one process, each candidate trained alone with the same recipe (the limit
             a researcher's plain loop reaches);
  (b) naive: one Ray Train job per candidate (lossforge's search path with --pack 1);
  (c) lossforge's default search path (packs of --pack candidates per Train job).

Candidates come from Nevergrad's RandomSearch with a fixed seed, so all three train the same
ones, each on one fold with one seed, every epoch, no controls and no re-evaluation (the packing
machinery alone; the honest-fitness costs are measured by search_efficiency.py). Prints candidates/hour, the ratios, and the share of (c)'s trial slots spent outside
training steps. The last line reads ``ratio c/a=<x> c/b=<y>``.

    python benchmarks/search_throughput.py --quick      # under 2 minutes on 2 CPUs
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import ray  # noqa: E402

from search.engine.evaluations import EvaluationLog  # noqa: E402
from search.engine.options import SearchOptions  # noqa: E402
from search.tasks.pu import PUSearchOptions, PUTask  # noqa: E402
from search.engine.space import TaylorSpace, make_nevergrad_optimizer  # noqa: E402
from search.engine.driver import run_search  # noqa: E402
from trainers.config import PUConfig  # noqa: E402
from trainers.pu_pack import PUPackPlan, run_pack  # noqa: E402

# One fold, one seed, every epoch, no controls, no re-evaluation: the same work in all three paths.
PLAIN = PUSearchOptions(folds=1, controls=[], rungs=[], reevaluate=0)


def candidates(n: int, order: int, seed: int) -> list[np.ndarray]:
    opt = make_nevergrad_optimizer("RandomSearch", TaylorSpace(order), budget=n, num_workers=n, seed=seed)
    return [np.asarray(opt.ask().value) for _ in range(n)]


def bare(vectors, opts: SearchOptions) -> tuple[float, float]:
    """(seconds, training seconds) of the plain in-process loop: each candidate alone, the
    same recipe and per-epoch evaluation as a trial."""
    space = TaylorSpace(opts.order)
    o = opts.task_options
    plan = PUPackPlan(datasets=list(opts.train) or [None], labelled_frac=o.labelled_frac, seed=opts.seed,
                      pu=PUConfig(epochs=opts.epochs, seed=opts.seed), folds=1, rungs=[opts.epochs])
    started = time.perf_counter()
    for i, v in enumerate(vectors):
        run_pack(plan, i, [{"id": i, **space.candidate(v)}])
    seconds = time.perf_counter() - started
    return seconds, seconds  # nothing but training and its evaluation happens here


def searched(opts: SearchOptions) -> tuple[float, float, int, int]:
    """(tuning seconds, summed training seconds, concurrency, pack) of one search run, fresh cluster."""
    summary = run_search(PUTask(), opts, log=lambda m: None)
    ray.shutdown()
    folder = Path(summary["folder"])
    tells = [e for e in EvaluationLog(folder).events() if e["event"] == "tell"]
    per_pack = {e["pack"]: e.get("train_seconds") or 0.0 for e in tells}
    assert len({e["id"] for e in tells}) == opts.budget
    return summary["tuning_seconds"], sum(per_pack.values()), summary["concurrency"], summary["pack"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 candidates, 3 epochs: under 2 minutes on 2 CPUs (fixed costs dominate: a smoke run)")
    p.add_argument("--candidates", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--pack", type=int, default=None, help="default: auto, as lossforge search")
    p.add_argument("--train", help="Parquet shards (default: the built-in problem)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    args = p.parse_args()
    n, epochs = (4, 3) if args.quick else (args.candidates, args.epochs)
    storage = tempfile.mkdtemp(prefix="lossforge-throughput-")
    common = dict(storage=storage, train=[args.train] if args.train else [], budget=n, epochs=epochs,
                  optimizer="RandomSearch", seed_losses=[], gpus_per_worker=args.gpus_per_worker, task_options=PLAIN)
    vectors = candidates(n, SearchOptions.order, SearchOptions.seed)
    try:
        a_s, a_train = bare(vectors, SearchOptions(**common))
        b_s, b_train, b_conc, _ = searched(SearchOptions(name="naive", pack=1, **common))
        c_s, c_train, c_conc, c_pack = searched(SearchOptions(name="packed", pack=args.pack, **common))
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    rate = lambda s: n / s * 3600  # noqa: E731
    print(f"{n} candidates x {epochs} epochs on {args.train or 'the built-in problem'}")
    print(f"{'path':<34} {'seconds':>8} {'cand/hour':>10} {'outside training':>17}")
    print(f"{'(a) bare in-process loop':<34} {a_s:>8.1f} {rate(a_s):>10.0f} {1 - a_train / a_s:>16.0%}")
    print(f"{'(b) one Train job per candidate':<34} {b_s:>8.1f} {rate(b_s):>10.0f} {1 - b_train / (b_s * b_conc):>16.0%}")
    print(f"{f'(c) lossforge, packs of {c_pack}' + ('' if args.pack else ' (auto)'):<34} {c_s:>8.1f} {rate(c_s):>10.0f} {1 - c_train / (c_s * c_conc):>16.0%}")
    print("(outside training: share of the trial slots' wall time (seconds x concurrent trials) not in training steps)")
    print(f"ratio c/a={rate(c_s) / rate(a_s):.2f} c/b={rate(c_s) / rate(b_s):.2f}")


if __name__ == "__main__":
    main()
