import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainers.data.shards import embeddings_to_arrow

# Ray picks these up at ray.init(); set before any test starts a cluster.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

SHARED_PU = Path(__file__).resolve().parents[2] / "shared" / "data" / "pu"


def write_embeddings(path, x, **columns):
    """Write an embedding shard: `embedding` as fixed_size_list<float32> plus the given columns."""
    table = pa.table({"embedding": embeddings_to_arrow(np.asarray(x, dtype=np.float32)), **columns})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


@pytest.fixture
def pu_parquet(tmp_path):
    """A small separable benchmark-mode shard folder (truth `label`), two shards."""
    rng = np.random.default_rng(0)
    n, dim = 400, 16
    label = (rng.random(n) < 0.4).astype(np.int8)
    x = rng.normal(size=(n, dim)) + 1.5 * label[:, None] * np.eye(dim)[0]
    write_embeddings(tmp_path / "train" / "a.parquet", x[:200], label=label[:200])
    write_embeddings(tmp_path / "train" / "b.parquet", x[200:], label=label[200:])
    return tmp_path / "train"


@pytest.fixture
def local_ray():
    """A fresh 2-CPU local cluster per test: a search or a Train job is one driver's job."""
    import ray

    from search.engine.driver import RAY_ENV

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
    yield
    ray.shutdown()


def shared_pu(name):
    if not (SHARED_PU / name / "train.parquet").exists():
        pytest.skip("../shared/data is absent (a user's clone has none)")
    return SHARED_PU / name
