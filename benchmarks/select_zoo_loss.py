"""Pick one loss for the zoo from the best losses of several searches, on PU validation only.

Each candidate file (a search's best_loss.json) is trained on every data set given and scored
by PU validation fitness (labelled vs unlabelled from the training split: no test labels, no
truth); the winner has the highest mean margin over PAN. Writes it with its provenance.

    python benchmarks/select_zoo_loss.py --losses a.json b.json --train sms/train.parquet rt/train.parquet \
        --out trainers/zoo/pu-taylor-v1.json --name pu-taylor-v1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.data.shards import read_table  # noqa: E402
from trainers.losses.taylor import TaylorLoss  # noqa: E402
from trainers.pu import PUConfig, resolve_loss, train_pu  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--losses", nargs="+", required=True)
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    args = p.parse_args()
    for loss in args.losses:  # the zoo holds polynomials; a search that exported a hand-made loss found none
        if isinstance(resolve_loss(loss), str):
            sys.exit(f"{loss} names the exact hand-made loss {resolve_loss(loss)!r}, not a polynomial: leave it out")
    tables = {path: read_table(path) for path in args.train}
    margins: dict[str, list[float]] = {loss: [] for loss in args.losses}
    for path, table in tables.items():
        def val(loss: str) -> float:
            return statistics.fmean(train_pu(PUConfig(loss=loss, seed=s), table)["val_fitness"] for s in range(args.seeds))

        pan = val("pan")
        for loss in args.losses:
            margins[loss].append(val(loss) - pan)
            print(f"{path}: {loss} validation fitness margin over PAN {margins[loss][-1]:+.4f}", flush=True)
    best = max(args.losses, key=lambda loss: statistics.fmean(margins[loss]))
    spec = TaylorLoss.load(best).to_dict()
    spec["name"] = args.name
    spec["provenance"] = {
        "selected_from": [str(Path(x)) for x in args.losses],
        "selected_on": "PU validation fitness (pu_auc) of the training splits, mean margin over PAN",
        "data": [str(Path(x)) for x in args.train],
        "margins_over_pan": {str(Path(k)): v for k, v in margins.items()},
    }
    Path(args.out).write_text(json.dumps(spec, indent=2) + "\n")
    print(f"selected {best} -> {args.out}")


if __name__ == "__main__":
    main()
