"""Losses that transfer: leave one data set out (issue 19, item 4).

For each data set H of ``--data``: one multi-data-set search on all the others
(`lossforge search --train A --train B ...`, the product's own command and defaults), then the
loss it exports and every baseline trained on H and scored on H's test split with the
``pu_baselines.py`` harness (seeds ``--first-seed`` on, the same epochs, labelling, validation
rows and threshold rule for every method). The search never reads H, so the table says what a
searched loss buys on a data set it has never seen.

    python3 benchmarks/transfer_loo.py --data ../shared/data/pu/sms ../shared/data/pu/rt \\
        ../shared/data/pu/20news EXTRA/agnews EXTRA/trec --budget 64 --storage loo --json loo.json

Each folder holds train.parquet and test.parquet. A finished search is reused and an interrupted
one resumed (searches are named ``loo-<set>`` under ``--storage``), and each held-out set's scoring
is kept beside its search, so the benchmark can be run again after a stop (``--held-out`` runs part
of the table: each search still reads every other set of ``--data``); each row is printed and
the JSON rewritten as soon as its set is scored. A search folder that was trained on another list of
sets is refused, not reused (use another ``--storage``). ``--search-args "--pack 2 --rungs none"``
passes options to every search.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pu_baselines import run as score_methods  # noqa: E402

from trainers.data.storage import normalise  # noqa: E402
from trainers.files import write_json  # noqa: E402
from trainers.pu import PU_BASELINES as BASELINES  # noqa: E402


def search_without(held_out: Path, sets: list[Path], args) -> Path:
    """The exported loss of a search over every set but ``held_out`` (run, resumed or reused)."""
    name = f"loo-{held_out.name}"
    folder = Path(args.storage) / name
    others = [str(s / "train.parquet") for s in sets if s != held_out]
    spec = folder / "search.json"
    searched_on = sorted(map(normalise, json.loads(spec.read_text())["train"])) if spec.exists() else None
    if searched_on is not None and searched_on != sorted(map(normalise, others)):
        sys.exit(f"transfer_loo: {folder} was searched on other sets than {others}; "
                 "use another --storage for another list of sets")
    if not (folder / "best_loss.json").exists():
        if folder.exists():
            cmd = ["resume", name, "--storage", args.storage]
        else:
            trains = [a for t in others for a in ("--train", t)]
            cmd = ["search", "--name", name, "--storage", args.storage, *trains, "--budget", str(args.budget),
                   "--seed", str(args.seed), "--epochs", str(args.epochs), "--labelling", args.labelling,
                   "--val-size", str(args.val_size), *shlex.split(args.search_args)]
        subprocess.run([sys.executable, "-m", "search.cli", *cmd], check=True)
    return folder / "best_loss.json"


def score_on(held_out: Path, loss: Path, args) -> dict:
    """The searched loss and the baselines on ``held_out``'s test split: {method: f1/auc mean, sd}.

    Kept beside the search (``transfer_score.json``, with the scoring options) so that a run
    stopped after this set does not score it again; other options score it afresh."""
    argv = ["--train", str(held_out / "train.parquet"), "--test", str(held_out / "test.parquet"),
            "--loss", str(loss), "--methods", ",".join(BASELINES), "--seeds", str(args.seeds),
            "--first-seed", str(args.first_seed), "--epochs", str(args.epochs), "--labelling", args.labelling,
            "--val-size", str(args.val_size)]
    kept = loss.parent / "transfer_score.json"
    if kept.exists() and json.loads(kept.read_text())["argv"] == argv:
        return json.loads(kept.read_text())["table"]
    table = score_methods(argv)
    write_json(kept, {"argv": argv, "table": table})
    return table


def row_for(held_out: Path, table: dict) -> dict:
    searched = next(m for m in table if m not in BASELINES)
    best = max(BASELINES, key=lambda m: table[m]["f1_mean"])
    return {"held_out": held_out.name, "searched": searched, "f1": table[searched]["f1_mean"],
            "f1_sd": table[searched]["f1_sd"], "best_baseline": best, "best_f1": table[best]["f1_mean"],
            "best_f1_sd": table[best]["f1_sd"], "gain": table[searched]["f1_mean"] - table[best]["f1_mean"]}


def table_lines(rows: list[dict]) -> list[str]:
    """The markdown table of ``rows`` and the mean gain under it."""
    lines = ["| held out | searched on the others: test F1 | best baseline: test F1 | searched - best |",
             "|---|---|---|---|"]
    lines += [f"| {r['held_out']} | {r['f1']:.1f} ± {r['f1_sd']:.1f} | {r['best_f1']:.1f} ± {r['best_f1_sd']:.1f} "
              f"({r['best_baseline']}) | {r['gain']:+.1f} |" for r in rows]
    if rows:
        lines.append(f"mean gain over the held-out sets: {sum(r['gain'] for r in rows) / len(rows):+.2f} F1")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="folders with train.parquet and test.parquet (>= 3)")
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="the searches' seed (labelling, folds, optimiser)")
    p.add_argument("--seeds", type=int, default=5, help="scoring seeds on the held-out set")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--labelling", default="scar")
    p.add_argument("--val-size", type=int, default=0, help="labelled rows per set (0: PU only)")
    p.add_argument("--storage", default="loo", help="where the searches' results folders go")
    p.add_argument("--search-args", default="", help="more options for every search, as one string")
    p.add_argument("--held-out", nargs="+", metavar="NAME",
                   help="hold out only these sets (folder names of --data), in this order: a long table run in parts; "
                        "--json then holds these rows only (a run without it rebuilds the whole table from the kept "
                        "searches and scorings, without training)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    sets = [Path(d) for d in args.data]
    if len(sets) < 3 or len({s.name for s in sets}) < len(sets):
        p.error("--data needs at least 3 folders with distinct names (each search needs 2 sets or more)")
    names = [s.name for s in sets]
    unknown = sorted(set(args.held_out or []) - set(names))
    if unknown:
        p.error(f"--held-out {' '.join(unknown)}: not among --data's folders {names}")
    order = [sets[names.index(n)] for n in args.held_out] if args.held_out else sets
    rows = []
    for held_out in order:
        rows.append(row_for(held_out, score_on(held_out, search_without(held_out, sets, args), args)))
        print(f"transfer_loo: {len(rows)}/{len(order)} held out {held_out.name}: " + table_lines(rows)[-2], flush=True)
        if args.json:
            write_json(Path(args.json), rows)
    print("\n".join(table_lines(rows)))
    return rows


if __name__ == "__main__":
    main()
