"""Selection-biased labelling, the labelled validation set and its threshold rule (issue: a fitness
that can tell good losses apart). Fast: numpy and a few seconds of torch."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from trainers.config import PUConfig
from trainers.data.pu import (
    SAR_GROUP_RATIO, LabelledSet, PUData, draw_labelled_set, labelling_propensities, pu_labels, split_entropy,
)
from trainers.data.shards import EmbeddingTable
from trainers.data.synthetic import synthetic_pu_problem
from trainers.errors import UsageError
from trainers.metrics import f1_optimal_threshold, labelled_threshold
from trainers.pu import Objective, TrainTensors, ValidationSets, build_population, evaluate_members, train_pu


def grouped_table(n_groups: int = 8, per_group: int = 1500, seed: int = 0) -> EmbeddingTable:
    """Positives in ``n_groups`` named groups, as many negatives; random 16-d embeddings."""
    rng = np.random.default_rng(seed)
    n = 2 * n_groups * per_group
    label = np.r_[np.ones(n // 2, np.int8), np.zeros(n // 2, np.int8)]
    group = np.array([f"g{i % n_groups}" for i in range(n // 2)] + ["neg"] * (n // 2))
    return EmbeddingTable(rng.normal(size=(n, 16)).astype(np.float32), label, None, "grouped", group=group)


def test_sar_group_labels_a_favoured_half_of_the_groups_five_times_as_often():
    table = grouped_table()
    labelled = pu_labels(table, 0.1, seed=3, labelling="sar-group")
    positives = table.label == 1
    assert labelled.sum() == round(0.1 * positives.sum())  # the asked fraction, exactly
    assert not labelled[~positives].any()
    rates = {g: labelled[positives & (table.group == g)].mean() for g in np.unique(table.group[positives])}
    high, low = sorted(rates.values())[len(rates) // 2:], sorted(rates.values())[: len(rates) // 2]
    assert len(high) == len(low) == 4
    ratio = np.mean(high) / np.mean(low)
    assert 0.8 * SAR_GROUP_RATIO < ratio < 1.25 * SAR_GROUP_RATIO  # 1,500 a group: the ratio within 20 %
    assert max(low) < min(high)  # two clean tiers, not a spread


def test_each_labelling_is_seeded():
    table = grouped_table(per_group=300)
    for labelling in ("scar", "sar-group", "sar-score"):
        a, b, c = (pu_labels(table, 0.2, seed=s, labelling=labelling) for s in (5, 5, 6))
        assert np.array_equal(a, b) and not np.array_equal(a, c), labelling


def test_scar_draw_is_unchanged_by_the_new_labellings():
    """Runs before the option existed keep their labelled positives."""
    table = grouped_table(per_group=300)
    rng = np.random.default_rng([7, 1])
    positives = np.flatnonzero(table.label == 1)
    expected = np.zeros(len(table), bool)
    expected[rng.choice(positives, size=round(0.2 * len(positives)), replace=False)] = True
    assert np.array_equal(pu_labels(table, 0.2, seed=7), expected)


def test_sar_score_propensity_rises_along_one_direction_and_sums_to_the_count():
    table = grouped_table(per_group=400)
    positives = np.flatnonzero(table.label == 1)
    n = round(0.1 * len(positives))
    e = labelling_propensities(table, positives, n, "sar-score", np.random.default_rng([2, 1]))
    assert e.sum() == pytest.approx(n, rel=1e-6)
    assert e.max() / e.min() > 20  # strongly selective, not uniform
    labelled = pu_labels(table, 0.1, seed=2, labelling="sar-score")
    # the labelled positives are the high-propensity ones: their mean propensity is well above the rest's
    chosen = np.isin(positives, np.flatnonzero(labelled))
    assert e[chosen].mean() > 2 * e[~chosen].mean()


def test_sar_group_without_a_group_column_clusters_the_positives():
    train, _ = synthetic_pu_problem()
    labelled = pu_labels(train, 0.1, seed=0, labelling="sar-group")
    assert labelled.sum() == round(0.1 * (train.label == 1).sum()) and not labelled[train.label == 0].any()
    assert not np.array_equal(labelled, pu_labels(train, 0.1, seed=0))


def test_sar_group_with_one_positive_group_clusters_the_positives():
    """One class against the rest (AG News Business, DBpedia Company): the group column gives every
    positive the same value, which would make sar-group uniform; the clusters bias it instead."""
    table = grouped_table(n_groups=1, per_group=3000)
    positives = np.flatnonzero(table.label == 1)
    n = round(0.1 * len(positives))
    e = labelling_propensities(table, positives, n, "sar-group", np.random.default_rng([4, 1]))
    assert e.sum() == pytest.approx(n, rel=1e-6)
    assert e.max() / e.min() == pytest.approx(SAR_GROUP_RATIO)  # two tiers, not SCAR's one


def test_validation_rows_never_reach_training():
    train, _ = synthetic_pu_problem()
    data = PUData.from_table(train, 0.1, seed=1, val_size=200)
    assert len(data.labelled_val) == 200 and len(data.x) == len(train) - 200
    seen = {row.tobytes() for row in data.x}
    assert not any(row.tobytes() in seen for row in data.labelled_val.x)
    assert data.labelled_val.y.any() and not data.labelled_val.y.all()
    again = PUData.from_table(train, 0.1, seed=1, val_size=200)  # seeded: the same rows again
    assert np.array_equal(again.labelled_val.x, data.labelled_val.x)
    tensors = TrainTensors.from_folds(data, [data.fold(0.2, split_entropy(1))], "naive")
    assert len(tensors.x) == len(train) - 200


def test_draw_labelled_set_errors():
    train, _ = synthetic_pu_problem()
    with pytest.raises(UsageError, match="--val-size"):
        draw_labelled_set(train, len(train), 0)
    real = replace(train, label=None, labelled=(train.label == 1).astype(np.int8))
    with pytest.raises(UsageError, match="--val FILE"):
        draw_labelled_set(real, 10, 0)


def test_f1_optimal_threshold_separates_a_clean_ranking_and_shrinks_toward_the_pu_rule():
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    truth = np.array([0, 0, 0, 1, 1, 1])
    assert f1_optimal_threshold(scores, truth) == pytest.approx(0.5)
    # 3 positives, shrink 10: weight 3/13 on the labelled cut
    assert labelled_threshold(scores, truth, pu_threshold=0.0, shrink=10) == pytest.approx(0.5 * 3 / 13)
    assert labelled_threshold(scores, truth, pu_threshold=0.0, shrink=0) == pytest.approx(0.5)


def test_baselines_and_candidates_share_one_labelled_validation_set():
    """In a pack every member, control or candidate, on every fold, is scored on the same rows."""
    train, _ = synthetic_pu_problem()
    data = PUData.from_table(train, 0.1, seed=0, val_size=100)
    folds = [data.fold(0.2, split_entropy(0, 1, 0, f)) for f in range(2)]
    val = ValidationSets.from_folds(data, folds)
    assert val.labelled_set is data.labelled_val
    cfg = PUConfig(epochs=1, hidden=16)
    pop = build_population(Objective("naive"), [0, 0], data.dim, cfg, member_fold=[0, 1])
    (a, b) = evaluate_members(pop, val, "pu_auc", None, "auc")
    assert a.fitness == pytest.approx(b.fitness)  # same weights, same labelled rows: fold-free
    pu_a, pu_b = evaluate_members(pop, replace(val, labelled_set=None), "pu_auc", None)
    assert pu_a.fitness != pytest.approx(pu_b.fitness)  # while the PU fitness depends on the fold


def test_train_pu_records_its_validation_and_selects_on_the_labelled_set():
    train, test = synthetic_pu_problem()
    cfg = PUConfig(loss="naive", epochs=2, hidden=32, labelling="sar-group", val_size=150)
    result = train_pu(cfg, train, test)
    assert result["fitness"] == "labelled_f1" and result["validation"].startswith("labelled set: 150 labelled rows")
    assert result["config"]["labelling"] == "sar-group"
    plain = train_pu(replace(cfg, val_size=0), train, test)
    assert plain["fitness"] == "pu_auc" and plain["validation"].startswith("PU only")
    assert LabelledSet  # exported for users of the Python API


def test_kmeans_assigns_in_blocks_exactly_as_in_one_pass():
    """sar-group's k-means assigns rows a block at a time (bounded memory on large sets) with the
    same result as one [N, k, dim] pass, so seeded labellings do not change."""
    from trainers.data.pu import _nearest

    rng = np.random.default_rng(0)
    x, centres = rng.normal(size=(5000, 16)), rng.normal(size=(6, 16))
    whole = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(_nearest(x, centres, rows=333), whole) and np.array_equal(_nearest(x, centres), whole)


def test_without_the_truth_the_hand_labelled_rows_give_the_class_prior(tmp_path):
    """A user's data has no truth, so nnPU/uPU, a prior-needing fitness and exact nnPU/uPU controls
    once needed --prior; a random labelled validation set estimates it (its positive share), in
    train-pu and in a search alike. Benchmark data keeps the truth, its best case."""
    from search.cli import build_parser, search_options
    from tests.conftest import write_embeddings

    train, test = synthetic_pu_problem()
    labelled = PUData.from_table(train, 0.1, seed=0).labelled
    user = EmbeddingTable(train.x, None, labelled, "user")  # labelled positives, no truth
    val = write_embeddings(tmp_path / "val.parquet", test.x[:200], label=test.label[:200])
    share = float(test.label[:200].mean())
    assert abs(share - float(train.label.mean())) > 1e-6, "the test would not tell the estimate from the truth"
    cfg = PUConfig(loss="nnpu", epochs=1, hidden=16, val=str(val))
    assert train_pu(cfg, user)["prior_used"] == pytest.approx(share)
    with pytest.raises(UsageError, match="--prior, or --val"):
        train_pu(replace(cfg, val=None), user)
    assert train_pu(cfg, train)["prior_used"] == pytest.approx(float(train.label.mean()))

    user_file = write_embeddings(tmp_path / "user.parquet", train.x, labelled=labelled.astype(np.int8))
    args = build_parser().parse_args(["search", "--train", str(user_file), "--val", str(val), "--controls",
                                      "pan,naive,nnpu", "--storage", str(tmp_path / "runs")])
    task, opts = search_options(args)
    assert task.read_inputs(opts).priors == [pytest.approx(share)]
    args.val, args.exact_controls = None, True  # PU-only searches train Taylor controls unless told
    with pytest.raises(UsageError, match="--controls nnpu"):
        task.read_inputs(search_options(args)[1])
