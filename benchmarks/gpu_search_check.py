"""GPU check (issues #5 and #6), one prepared script for a lent GPU machine:

  1. the CUDA path end to end: a search whose Train workers train on the GPU;
  2. 4 trials sharing one GPU (--gpus-per-worker 0.25), candidates/hour and GPU utilisation;
  3. (c) packed search against (b) one Train job per candidate, same candidates, as
     benchmarks/search_throughput.py does on CPUs, with K >= 32.

    python3 benchmarks/gpu_search_check.py            # about 5 minutes on one H100
    python3 benchmarks/gpu_search_check.py --quick    # about 2 minutes

Exits 2 with a message where torch sees no CUDA device. Utilisation is sampled from nvidia-smi
every 0.5 s while each search runs (median and mean over the run).
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
from search.engine.driver import run_search  # noqa: E402


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


def search(name: str, storage: str, **options) -> dict:
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU machine", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, ray {ray.__version__}", flush=True)
    budget, epochs, naive = (64, 5, 4) if args.quick else (256, 10, 8)
    storage = tempfile.mkdtemp(prefix="lossforge-gpu-")
    try:
        # 1 + 2: four trials share the GPU, packs of budget/4 (>= 32 candidates each).
        shared = search("4 trials x 0.25 GPU", storage, budget=budget, epochs=epochs, gpus_per_worker=0.25,
                        cpus_per_worker=1, concurrency=4, pack=budget // 4)
        # 3: the naive design on the same GPU, a few candidates (its rate is per candidate).
        one = search("(b) 1 Train job/candidate", storage, budget=naive, epochs=epochs, gpus_per_worker=0.25,
                     cpus_per_worker=1, concurrency=4, pack=1)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    assert shared["ok"] == budget, "every candidate trained on the GPU"
    print(f"ratio c/b={shared['rate'] / one['rate']:.1f} (target >= 20 with K >= 32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
