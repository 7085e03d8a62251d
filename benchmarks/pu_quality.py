"""A searched loss side by side with every PU baseline (naive/upu/nnpu/vpu/pan/oracle).

    python benchmarks/pu_quality.py --loss zoo:pu-taylor-v3 --train ../shared/data/pu/rt/train.parquet \
        --test ../shared/data/pu/rt/test.parquet --seeds 5 [--json out.json]

The same harness as pu_baselines.py (one table, mean +- sd over seeds); --json writes
{method: {"f1_mean", "f1_sd", "auc_mean", ...}}.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pu_baselines import run  # noqa: E402

if __name__ == "__main__":
    if "--loss" not in sys.argv:
        sys.exit("pu_quality.py needs --loss FILE|zoo:NAME (pu_baselines.py runs the baselines alone)")
    run()
