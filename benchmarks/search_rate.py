"""Evaluated candidates per hour of a real search with the default honest fitness (folds, paired
controls, successive halving), and what each rung costs.

    python3 benchmarks/search_rate.py --train ../shared/data/pu/rt/train.parquet --budget 500

Runs ``lossforge search`` (a fresh local Ray cluster, default options, no re-evaluation so the
rate is the search's own) and reads its evaluation log: how many candidates reached each rung,
the member-epochs each rung trained (candidates x folds x seeds x epochs, the controls included)
and its share of all training. Target: >= 2,000 evaluated candidates per hour on 2 CPUs.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.evaluations import EvaluationLog  # noqa: E402
from search.engine.options import SearchOptions, with_task_defaults  # noqa: E402
from search.tasks.pu import PUSearchOptions, PUTask  # noqa: E402
from search.engine.driver import run_search  # noqa: E402


def rung_costs(evaluations, plan, packs: int) -> list[dict]:
    """Per rung: candidates that trained in it, and member-epochs (controls included)."""
    reached = Counter()
    for e in evaluations:
        rung = (e.details or {}).get("rung", -1)
        for r in range(rung + 1):
            reached[r] += 1
    rows, previous = [], 0
    members = plan.members_per_unit
    for r, epochs in enumerate(plan.rungs):
        units = reached[r] + len(plan.controls) * packs
        rows.append({"rung": r, "epochs": epochs, "candidates": reached[r], "member_epochs": units * members * (epochs - previous)})
        previous = epochs
    total = sum(row["member_epochs"] for row in rows)
    for row in rows:
        row["share"] = row["member_epochs"] / total if total else 0.0
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", help="Parquet shards (default: the built-in problem)")
    p.add_argument("--budget", type=int, default=500)
    p.add_argument("--keep-results", help="keep the results folder here instead of a temporary one")
    args = p.parse_args()
    storage = args.keep_results or tempfile.mkdtemp(prefix="lossforge-rate-")
    opts = SearchOptions(name="rate", storage=storage, train=[args.train] if args.train else [], budget=args.budget,
                         task_options=PUSearchOptions(reevaluate=0))
    try:
        task = PUTask()
        summary = run_search(task, opts, log=lambda m: None)
        evaluations = EvaluationLog(Path(summary["folder"])).told()
        full = with_task_defaults(task, opts)
        plan = task.plan(full, task.read_inputs(full))
        packs = len({e.pack for e in evaluations})
        rows = rung_costs(evaluations, plan, packs)
    finally:
        if not args.keep_results:
            shutil.rmtree(storage, ignore_errors=True)
    statuses = Counter(e.status for e in evaluations)
    rate = len(evaluations) / summary["tuning_seconds"] * 3600
    print(f"{args.train or 'built-in problem'}: {len(evaluations)} candidates evaluated in {summary['tuning_seconds']:.0f} s "
          f"(packs of {summary['pack']}, {summary['concurrency']} at a time): {rate:,.0f} candidates/hour; {dict(statuses)}")
    print(f"{'rung':>4} {'epochs':>6} {'candidates':>10} {'member-epochs':>14} {'share':>6}")
    for r in rows:
        print(f"{r['rung']:>4} {r['epochs']:>6} {r['candidates']:>10} {r['member_epochs']:>14} {r['share']:>6.0%}")
    print(f"rate={rate:.0f} candidates/hour (target >= 2000)")


if __name__ == "__main__":
    main()
