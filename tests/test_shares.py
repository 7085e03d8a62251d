"""Each data-parallel worker reads only its share; float16 stays float16; a stratified sample."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainers.data.pu import make_pu_split, read_pu_share, row_uniform, stratified_sample
from trainers.data.shards import embeddings_to_arrow, open_shards, read_rows, read_table
from trainers.pu import PUConfig, share_data, train_epoch, build_population, Objective


def write_half(path, x, rows_per_group=50, **columns):
    table = pa.table({"embedding": embeddings_to_arrow(x, np.float16), **{k: pa.array(v, pa.int8()) for k, v in columns.items()}})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=rows_per_group)


@pytest.fixture
def half_shards(tmp_path):
    rng = np.random.default_rng(1)
    n, dim = 700, 8
    label = (rng.random(n) < 0.4).astype(np.int8)
    x = (rng.normal(size=(n, dim)) + 2.0 * label[:, None] * np.eye(dim)[0]).astype(np.float16)
    for i, (a, b) in enumerate([(0, 230), (230, 300), (300, 700)]):
        write_half(tmp_path / "d" / f"part-{i}.parquet", x[a:b], label=label[a:b])
    return tmp_path / "d", x, label


def test_float16_stays_float16_and_any_row_range_reads_exactly(half_shards):
    folder, x, label = half_shards
    whole = read_table(folder)
    assert whole.x.dtype == np.float16 and whole.x.nbytes == 700 * 8 * 2
    np.testing.assert_array_equal(whole.x, x)
    shards = open_shards(folder)
    for start, stop in [(0, 1), (45, 260), (229, 231), (699, 700), (0, 700)]:
        part = read_rows(shards, start, stop)
        np.testing.assert_array_equal(part.x, x[start:stop])
        np.testing.assert_array_equal(part.label, label[start:stop])
    keep = np.array([3, 229, 230, 650])
    np.testing.assert_array_equal(read_rows(shards, keep=keep).x, x[keep])


def test_shares_partition_the_rows_and_agree_on_labelling_and_validation(half_shards):
    folder, x, label = half_shards
    shares = [read_pu_share(str(folder), r, 3, 0.3, seed=4, val_frac=0.2) for r in range(3)]
    assert [s.start for s in shares] == [0, 233, 466] and sum(len(s.x) for s in shares) == 700
    np.testing.assert_array_equal(np.concatenate([s.x for s in shares]), x)  # each read its own rows only
    assert all(s.x.dtype == np.float16 for s in shares)
    # the labelling and the labelled positives' validation draw are the in-process ones
    split = make_pu_split(read_table(folder), 0.3, seed=4, val_frac=0.2)
    np.testing.assert_array_equal(np.concatenate([s.labelled for s in shares]), split.data.labelled)
    in_val = np.concatenate([s.in_val for s in shares])
    labelled_val = np.flatnonzero(in_val & split.data.labelled)
    np.testing.assert_array_equal(labelled_val, np.sort(split.fold.val[split.fold.val_labelled]))
    # unlabelled rows validate by a hash of (seed, row id): about val_frac of them, seed-dependent
    unlabelled = ~split.data.labelled
    assert abs(in_val[unlabelled].mean() - 0.2) < 0.05
    assert not np.array_equal(row_uniform(4, np.arange(700)) < 0.2, row_uniform(5, np.arange(700)) < 0.2)
    again = read_pu_share(str(folder), 1, 3, 0.3, seed=4, val_frac=0.2)
    np.testing.assert_array_equal(again.in_val, shares[1].in_val)


def test_share_data_casts_per_batch_and_gives_every_worker_the_same_steps(half_shards):
    folder, _, _ = half_shards
    shares = [read_pu_share(str(folder), r, 2, 0.3, seed=0, val_frac=0.2) for r in range(2)]

    counts = [int((~s.labelled & ~s.in_val).sum()) for s in shares]
    positives = [s.x[s.labelled & ~s.in_val] for s in shares]

    def gather(a, rank):  # what an all-gather across the two workers returns, in rank order
        if a.shape == (1,):
            return np.array(counts)
        if a.ndim == 2 and a.shape[0] == len(positives[rank]) and a.dtype == np.float16:
            return np.concatenate(positives)
        return a

    tensors = [share_data(s, "pan", gather=lambda a, r=r: gather(a, r))[0] for r, s in enumerate(shares)]
    assert len(tensors[0].unlabelled[0]) == len(tensors[1].unlabelled[0]) == min(counts)
    assert len(tensors[0].x_positive) == sum(len(p) for p in positives)
    assert tensors[0].x.dtype == torch.float16  # no float32 copy of the pool
    cfg = PUConfig(epochs=1, hidden=8, batch_size=32)
    pop = build_population(Objective("pan"), [0], shares[0].dim, cfg)
    stats = train_epoch(pop, tensors[0], cfg)
    assert np.isfinite(stats["loss"]).all()


def test_stratified_sample_keeps_each_groups_share(half_shards):
    folder, x, label = half_shards
    sample = stratified_sample(str(folder), 200, seed=3)
    assert abs(len(sample) - 200) <= 1 and sample.x.dtype == np.float16
    assert abs(sample.label.mean() - label.mean()) < 0.01
    again = stratified_sample(str(folder), 200, seed=3)
    np.testing.assert_array_equal(again.x, sample.x)
    assert not np.array_equal(stratified_sample(str(folder), 200, seed=4).x, sample.x)
    rows = {tuple(r) for r in x.view(np.uint16)}
    assert all(tuple(r) in rows for r in sample.x.view(np.uint16))
