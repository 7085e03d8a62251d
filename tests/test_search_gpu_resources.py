"""The GPU path as far as a CPU machine can take it: a local cluster that advertises 4 GPUs it
does not have. Concurrency follows the GPU share, each pack's worker is given its share of one
GPU, and with no CUDA it trains on the CPU. A lent GPU machine runs benchmarks/gpu_search_check.py."""
from dataclasses import replace

import pytest
import ray
import torch

from search.engine.evaluations import EvaluationLog
from search.engine.options import SearchOptions
from search.tasks import TASKS
from search.tasks.pu import PUSearchOptions
from search.session.ray_session import default_concurrency
from search.engine.driver import RAY_ENV, run_search

pytestmark = pytest.mark.slow

FAKE_GPUS = 4


@pytest.fixture
def cluster_advertising_gpus():
    ray.init(num_cpus=4, num_gpus=FAKE_GPUS, include_dashboard=False, runtime_env={"env_vars": RAY_ENV},
             log_to_driver=False)
    yield
    ray.shutdown()


def most_at_once(told) -> int:
    """The most packs whose workers ran at the same moment (each pack's span: from its tells' time
    less the worker's seconds, to its first tell)."""
    spans = {}
    for e in told:
        start, end = spans.get(e["pack"], (e["time"] - e["wall_seconds"], e["time"]))
        spans[e["pack"]] = (min(start, e["time"] - e["wall_seconds"]), min(end, e["time"]))
    return max(sum(1 for s, t in spans.values() if s <= moment < t) for moment, _ in spans.values())


def test_quarter_gpu_packs_run_side_by_side_each_on_its_share_and_on_the_cpu_without_cuda(
        tmp_path, pu_parquet, cluster_advertising_gpus):
    assert not torch.cuda.is_available(), "this test is for CPU machines: a lent GPU runs gpu_search_check.py"
    opts = SearchOptions(name="gpu", storage=str(tmp_path), train=[str(pu_parquet)], budget=8, pack=2, epochs=1,
                         gpus_per_worker=0.25, seed_losses=[],
                         task_options=PUSearchOptions(folds=1, controls=[], rungs=[], reevaluate=0))
    # 4 GPUs / 0.25 = 16 packs by GPU, 4 by CPU: the CPU limits; 2 GPUs per worker: the GPUs limit.
    assert default_concurrency(opts) == 4
    assert default_concurrency(replace(opts, gpus_per_worker=2.0)) == FAKE_GPUS // 2
    summary = run_search(TASKS["pu"], opts, log=lambda line: None)
    assert summary["concurrency"] == 4 and summary["told"] == 8
    told = [e for e in EvaluationLog(tmp_path / "gpu").events() if e["event"] == "tell"]
    assert len(told) == 8 and all(e["status"] == "ok" for e in told)
    devices = {e["device"] for e in told}
    assert all(d.startswith("cpu (GPU ") and d.endswith(" x0.25 assigned, CUDA absent)") for d in devices), devices
    assert {d.split()[2] for d in devices} <= {str(i) for i in range(FAKE_GPUS)}
    assert 2 <= most_at_once(told) <= 4, "4 packs: side by side, never more at once than the resources allow"
    assert ray.available_resources().get("GPU", 0) == FAKE_GPUS, "every share given back"
