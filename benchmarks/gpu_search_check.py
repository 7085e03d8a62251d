"""GPU check (issues #5 and #6), one prepared script for a lent GPU machine:

  1. the CUDA path end to end: a search whose Train workers train on the GPU;
  2. 4 trials sharing one GPU (--gpus-per-worker 0.25), candidates/hour and GPU utilisation;
  3. (c) packed search against (b) one Train job per candidate, same candidates, as
     benchmarks/search_throughput.py does on CPUs, with K >= 32;
  4. (issue 20, item 5) the preference GPU recipe: ``train-dpo --mode cross``, MiniLM-L6 as a full
     cross-encoder over [prompt] [SEP] [a] [SEP] [b] (512 tokens), one Ray Train worker on the
     GPU, on the AlpacaEval pairs (``--pairs-dir``; the built-in synthetic pairs where absent),
     then the test split scored from raw text: agreement beside both rules, pairs/s.

    python3 benchmarks/gpu_search_check.py            # the searches, then the recipe on all pairs
    python3 benchmarks/gpu_search_check.py --quick    # searches: 2 min on one H200 (measured)
    python3 benchmarks/gpu_search_check.py --only cross --max-pairs 4000   # the recipe alone, a sample
    python3 benchmarks/gpu_search_check.py --smoke    # any CPU machine, ~2 min: the script's own test

Exits 2 with a message where torch sees no CUDA device, unless ``--smoke``: then every part runs tiny
on the CPU, the searches on a local cluster that advertises one GPU it does not have (their workers
fall back to the CPU), the recipe on the built-in pairs and tiny model with no GPU. Utilisation is
sampled from nvidia-smi every 0.5 s while each search runs (median and mean over the run).
A lent machine has no Ray or Nevergrad and no MiniLM weights: ``benchmarks/device_bundle.py`` packs
them (and the AlpacaEval pairs) into the ignored folder ``.dev/`` to carry there.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
import torch  # noqa: E402

from search.session.background import every  # noqa: E402
from search.engine.evaluations import EvaluationLog  # noqa: E402
from search.engine.options import SearchOptions  # noqa: E402
from search.tasks.pu import PUSearchOptions, PUTask  # noqa: E402
from search.engine.driver import RAY_ENV, run_search  # noqa: E402


def sample_utilisation(samples: list[float]) -> None:
    """Append nvidia-smi's utilization.gpu now to ``samples``."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True)
    except OSError:  # no nvidia-smi: the summary says "no samples"
        return
    if out.returncode == 0 and out.stdout.strip():
        samples.append(float(out.stdout.split()[0]))


def utilisation_summary(samples: list[float]) -> str:
    if not samples:
        return "no nvidia-smi samples"
    return f"GPU utilisation median {statistics.median(samples):.0f} %, mean {statistics.mean(samples):.0f} %"


def start_ray_for(smoke: bool) -> None:
    """``--smoke`` on a CPU machine: a local cluster that advertises one GPU, so that the searches'
    GPU shares schedule as on a GPU machine (otherwise the search starts its own cluster)."""
    if smoke and not torch.cuda.is_available():
        ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, runtime_env={"env_vars": RAY_ENV},
                 log_to_driver=False)


def search(name: str, storage: str, smoke: bool = False, **options) -> dict:
    start_ray_for(smoke)
    # The packing machinery alone (one fold, no controls, no halving or re-evaluation), as the
    # throughput benchmark measures it on CPUs.
    plain = PUSearchOptions(folds=1, controls=[], rungs=[], reevaluate=0)
    opts = SearchOptions(name=name, storage=storage, optimizer="RandomSearch", seed_losses=[], task_options=plain, **options)
    samples: list[float] = []
    with every(0.5, lambda: sample_utilisation(samples), final=False):
        summary = run_search(PUTask(), opts, log=lambda m: None)
    ray.shutdown()
    tells = [e for e in EvaluationLog(Path(summary["folder"])).events() if e["event"] == "tell"]
    ok = sum(e["status"] == "ok" for e in tells)
    rate = opts.budget / summary["tuning_seconds"] * 3600
    print(f"{name:<28} {summary['tuning_seconds']:>7.1f} s {rate:>9.0f} cand/h  pack {summary['pack']:>3}  "
          f"concurrency {summary['concurrency']}  ok {ok}/{opts.budget}  {utilisation_summary(samples)}", flush=True)
    return {"seconds": summary["tuning_seconds"], "rate": rate, "ok": ok}


def cross_recipe(args, storage: str) -> None:
    """Part 4: the cross-encoder preference recipe on the GPU, as a user runs train-dpo."""
    from search.jobs.train_dpo import run_train_dpo
    from search.session.ray_session import Scaling
    from trainers.config import DPOConfig
    from trainers.embed import default_model_dir

    pairs = Path(args.pairs_dir)
    found = not args.smoke and (pairs / "train.parquet").exists()  # --smoke: the built-in pairs and tiny model
    train, test = (str(pairs / "train.parquet"), str(pairs / "test.parquet")) if found else (None, None)
    model = args.model or (str(default_model_dir()) if train else None)  # the built-in pairs go with the tiny model
    cfg = DPOConfig(mode="cross", model=model, epochs=1 if args.smoke else args.epochs, batch_size=32, lr=3e-5 if model else 1e-3,
                    max_length=512 if model else 64, max_prompt_length=64 if model else 8, max_pairs=args.max_pairs,
                    eval_batch_size=128)
    print(f"cross recipe: {train or 'built-in synthetic pairs'}, model {model or 'built-in tiny'}", flush=True)
    samples: list[float] = []
    with every(0.5, lambda: sample_utilisation(samples), final=False):
        # --smoke: the recipe's CPU path, on what a 2-CPU machine has (a worker asking for more waits forever)
        gpu = torch.cuda.is_available()
        scaling = Scaling(workers=1, cpus_per_worker=4 if gpu else 1, gpus_per_worker=1 if gpu else 0)
        m = run_train_dpo(cfg, train, test, str(Path(storage) / "cross"), scaling,
                          log=lambda line: print(line, flush=True))
    ray.shutdown()
    last = m["history"][-1]
    print(f"cross recipe: {m['seconds']:.0f} s, training {last.get('train_pairs_per_second', float('nan')):.0f} "
          f"pairs/s, {utilisation_summary(samples)}", flush=True)
    for key in ("test", "test_length_heuristic", "test_length_format_rule"):
        if key in m and isinstance(m[key], dict):
            print(f"  {key:<20} agreement {m[key].get('agreement', float('nan')):.3f}  length-controlled "
                  f"{m[key].get('agreement_lc', float('nan')):.3f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny, and on a CPU machine too (see above)")
    p.add_argument("--only", choices=("search", "cross"), help="run one part (default: both)")
    p.add_argument("--pairs-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/pairs/alpaca_eval"),
                   help="cross recipe: a folder with train.parquet and test.parquet")
    p.add_argument("--model", help="cross recipe: a local encoder folder (default: MiniLM-L6 from its package)")
    p.add_argument("--max-pairs", type=int, help="cross recipe: train on a sample of this many pairs")
    # One epoch: on the H200 (session 31) the second overfitted (validation 84.6 -> 84.3 %, 71.0 -> 68.0 % LC).
    p.add_argument("--epochs", type=int, default=1, help="cross recipe: epochs")
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA device: this check needs a GPU machine (--smoke runs it tiny on CPUs)", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (--smoke)"
    print(f"device: {device}, torch {torch.__version__}, ray {ray.__version__}", flush=True)
    # --smoke: 2 trials, not 4, so that a 2-CPU machine runs it in a couple of minutes.
    budget, epochs, naive, trials = (4, 1, 2, 2) if args.smoke else (64, 5, 4, 4) if args.quick else (256, 10, 8, 4)
    storage = tempfile.mkdtemp(prefix="lossforge-gpu-")
    if args.only == "cross":
        try:
            cross_recipe(args, storage)
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        return 0
    try:
        # 1 + 2: four trials share the GPU, packs of budget/4 (>= 32 candidates each with the default).
        # Search names are folder names: plain characters only.
        shared = search("packs-on-quarter-gpus", storage, args.smoke, budget=budget, epochs=epochs,
                        gpus_per_worker=0.25, cpus_per_worker=1, concurrency=trials, pack=budget // trials)
        # 3: the naive design on the same GPU, a few candidates (its rate is per candidate).
        one = search("one-train-job-per-candidate", storage, args.smoke, budget=naive, epochs=epochs,
                     gpus_per_worker=0.25, cpus_per_worker=1, concurrency=trials, pack=1)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    assert shared["ok"] == budget, "every candidate trained on the GPU"
    print(f"ratio c/b={shared['rate'] / one['rate']:.1f} (target >= 20 with K >= 32)", flush=True)
    if args.only is None:
        storage = tempfile.mkdtemp(prefix="lossforge-gpu-")
        try:
            cross_recipe(args, storage)
        finally:
            shutil.rmtree(storage, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
