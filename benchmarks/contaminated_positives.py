"""Does any loss gain when some labelled "positives" are negatives? (issue 22 item 6: looking for a
built-in problem where the loss is the lever.)

    python3 benchmarks/contaminated_positives.py --rates 0 0.2 0.4 --seeds 5 --json contaminated.json

The built-in problem, 10 % of its positives labelled at random per seed, plus negatives labelled
as positives at ``rate`` of the labelled set (the truth stays for scoring). Baselines and order-2
Taylor points (naive, PAN, and two bounded losses, the sigmoid loss and GCE q = 0.5, the textbook
answers to label noise) train with ``train_pu``, 10 epochs; test F1 mean and sd over the seeds.
nnPU is given the true prior. Measured in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from trainers.config import PUConfig  # noqa: E402
from trainers.data.synthetic import synthetic_pu_problem  # noqa: E402
from trainers.losses.seeds import taylor_point  # noqa: E402
from trainers.losses.taylor import TaylorLoss  # noqa: E402
from trainers.pu import train_pu  # noqa: E402


def gce(q: float):
    """Generalised cross-entropy (Zhang & Sabuncu 2018) for the D and C games: bounded in [0, 1/q]."""
    return lambda dp, du, cp, cu: ((1 - dp**q) / q + (1 - (1 - du) ** q) / q, (1 - cp**q) / q + (1 - (1 - cu) ** q) / q)


def loss_files(folder: Path) -> dict[str, str]:
    """Method name -> what ``PUConfig.loss`` takes (a baseline's name or a Taylor loss file)."""
    losses = {"naive": "naive", "pan": "pan", "vpu": "vpu", "nnpu": "nnpu"}
    points = {"naive (Taylor)": taylor_point("naive", 2), "pan (Taylor)": taylor_point("pan", 2),
              "sigmoid": TaylorLoss.from_function(lambda dp, du, cp, cu: (du - dp, cu - cp), order=2, name="sigmoid"),
              "gce 0.5": TaylorLoss.from_function(gce(0.5), order=2, name="gce0.5")}
    for i, (name, loss) in enumerate(points.items()):
        loss.save(folder / f"{i}.json")
        losses[name] = str(folder / f"{i}.json")
    return losses


def contaminated(train, rate: float, frac: float, seed: int):
    """``train`` with a ``labelled`` column: ``frac`` of the positives, plus negatives at ``rate`` of the set."""
    rng = np.random.default_rng([seed, 99])
    positives, negatives = np.flatnonzero(train.label == 1), np.flatnonzero(train.label == 0)
    n = int(frac * len(positives))
    labelled = np.zeros(len(train), np.int8)
    labelled[rng.choice(positives, n, replace=False)] = 1
    labelled[rng.choice(negatives, int(round(rate * n / (1 - rate))), replace=False)] = 1
    return replace(train, labelled=labelled)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    p.add_argument("--seeds", type=int, default=5, help="seeds 1..N")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--labelled-frac", type=float, default=0.1)
    p.add_argument("--json")
    args = p.parse_args()
    if any(not 0 <= r < 1 for r in args.rates):
        p.error("--rates must be in [0, 1)")
    train, test = synthetic_pu_problem()
    prior = float(train.label.mean())
    table = {}
    with tempfile.TemporaryDirectory() as folder:
        losses = loss_files(Path(folder))
        for rate in args.rates:
            f1 = {name: [] for name in losses}
            for seed in range(1, args.seeds + 1):
                data = contaminated(train, rate, args.labelled_frac, seed)
                for name, loss in losses.items():
                    cfg = PUConfig(loss=loss, epochs=args.epochs, seed=seed, prior=prior if name == "nnpu" else None)
                    f1[name].append(100 * train_pu(cfg, data, test)["test_f1"])
            table[str(rate)] = {name: [float(np.mean(v)), float(np.std(v))] for name, v in f1.items()}
            print(f"rate {rate}: " + " | ".join(f"{k} {m:.1f} ± {s:.1f}" for k, (m, s) in table[str(rate)].items()),
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
