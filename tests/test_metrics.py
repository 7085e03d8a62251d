"""Fitness, the shared threshold rule and test metrics on hand-made scores."""
import numpy as np
import pytest

from trainers.metrics import average_precision, classification_metrics, labelled_fitness, pu_fitness, roc_auc, shared_threshold


def test_roc_auc_counts_ties_half():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1, 1, 1], [1, 0, 1]) == pytest.approx(0.5)
    assert np.isnan(roc_auc([1, 2], [1, 1]))


def test_average_precision_by_hand_with_ties_counted_together():
    assert average_precision([3, 2, 1], [1, 1, 0]) == 1.0
    assert average_precision([3, 2, 1], [0, 1, 1]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # three tied rows, one positive: precision 1/3 whatever order the sort leaves them in
    assert average_precision([1, 1, 1], [1, 0, 0]) == average_precision([1, 1, 1], [0, 0, 1]) == pytest.approx(1 / 3)
    assert labelled_fitness("ap", np.array([0.2, 0.9]), np.array([0, 1]), 0.5) == 1.0
    assert np.isnan(average_precision([1.0, 2.0], [0, 0]))


def test_shared_threshold_keeps_90_percent_of_labelled_positives():
    scores = np.arange(100, dtype=float)
    labelled = np.zeros(100, bool)
    labelled[np.arange(0, 100, 10)] = True  # scores 0, 10, ..., 90
    t = shared_threshold(scores, labelled)
    assert t == pytest.approx(9.0)  # 10 % quantile of 0..90 (linear): one labelled positive falls below
    assert (scores[labelled] >= t).mean() == pytest.approx(0.9)
    with pytest.raises(ValueError):
        shared_threshold(scores, np.zeros(100, bool))


def test_pu_fitness_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1, 0.3, 0.85])
    labelled = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    assert pu_fitness("pu_auc", scores, labelled) == pytest.approx(roc_auc(scores, labelled))
    t = shared_threshold(scores, labelled)  # 0.72: labelled recall 2/3, 3 of 8 predicted positive
    r, p = (scores[labelled] >= t).mean(), (scores >= t).mean()
    assert pu_fitness("lee_liu", scores, labelled) == pytest.approx(r**2 / p)
    assert pu_fitness("pu_accuracy", scores, labelled, prior=0.5) == pytest.approx(1 - p + 2 * 0.5 * r - 0.5)
    assert pu_fitness("pu_f1", scores, labelled, prior=0.5) == pytest.approx(2 * 0.5 * r / (0.5 + p))
    with pytest.raises(ValueError, match="prior"):
        pu_fitness("pu_f1", scores, labelled)
    with pytest.raises(ValueError, match="truth"):
        pu_fitness("truth_val_f1", scores, labelled)
    assert np.isnan(pu_fitness("pu_auc", np.array([np.nan] * 8), labelled))


def test_classification_metrics_by_hand():
    m = classification_metrics([0.9, 0.8, 0.3, 0.2], [1, 0, 1, 0], threshold=0.5)
    assert m == pytest.approx({"f1": 0.5, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "auc": 0.75})
