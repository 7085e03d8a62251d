"""A small float16 PU pool in several shards of several row groups, for the share tests."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainers.data.shards import embeddings_to_arrow


def write_pool(folder, n=1000, dim=16, nan_row=None, seed=0):
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.4).astype(np.int8)
    x = (rng.normal(size=(n, dim)) + 2.0 * label[:, None] * np.eye(dim)[0]).astype(np.float16)
    if nan_row is not None:
        x[nan_row, 3] = np.nan
    folder.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, n, 300)):
        table = pa.table({"embedding": embeddings_to_arrow(x[start:start + 300], np.float16),
                          "label": pa.array(label[start:start + 300], pa.int8())})
        pq.write_table(table, folder / f"part-{i:05d}.parquet", row_group_size=100)
    return folder
