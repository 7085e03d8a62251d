"""Validation fitness that needs no negatives, the shared threshold rule, and test metrics.

Scores are classifier logits (any monotone score works). Everything here is numpy.

PU-only fitness (higher is better), all computed from labelled-vs-unlabelled alone:
- ``pu_auc``: ROC-AUC of labelled positives against unlabelled points. Under SCAR it equals
  (1 - pi') * AUC + pi' / 2 with pi' the positive share of the unlabelled set, so it ranks
  classifiers exactly as the true AUC does. The default.
- ``pu_pauc``: the same AUC restricted to the labelled positives that score lowest (true
  positive rates 0.8-1.0): the part of the ranking the shared threshold (recall 0.9) cuts, so it
  tracks test F1 where ``pu_auc`` also rewards the easy top of the ranking.
- ``lee_liu``: Lee & Liu's r^2 / P(y_hat = 1) at the shared threshold (r: recall on labelled
  positives). Proportional to precision * recall; needs no prior.
- ``pu_accuracy``, ``pu_f1``: accuracy and F1 estimated from r and P(y_hat = 1) when the class
  prior pi is known: TP = pi r, FP = P(y_hat=1) - pi r, FN = pi (1 - r).
``truth_val_f1`` (benchmark mode only) uses the truth of the validation split. It exists to study
the proxies and is never a default.
"""
from __future__ import annotations

import numpy as np

from trainers.config import DEFAULT_FITNESS, FITNESS_NEEDS_PRIOR, PU_FITNESS, TRUTH_FITNESS, VAL_METRICS  # noqa: F401
from trainers.errors import UsageError


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half; nan when a class is missing."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based, ties averaged
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


TARGET_RECALL = 0.9
PAUC_BAND = (0.8, 1.0)  # true positive rates whose part of the ROC curve pu_pauc measures


def partial_pu_auc(scores: np.ndarray, labelled: np.ndarray, band: tuple[float, float] = PAUC_BAND) -> float:
    """Mean share of unlabelled points scoring below each labelled positive whose rank among the
    labelled positives (best first) lies in ``band`` of the recall axis (ties count half)."""
    scores = np.asarray(scores, dtype=np.float64)
    labelled = np.asarray(labelled).astype(bool)
    positives = np.sort(scores[labelled])[::-1]
    unlabelled = np.sort(scores[~labelled])
    if len(positives) == 0 or len(unlabelled) == 0:
        return float("nan")
    low = int(np.floor(band[0] * len(positives)))
    high = max(low + 1, int(np.ceil(band[1] * len(positives))))
    chosen = positives[low:high]
    below = np.searchsorted(unlabelled, chosen, side="left")
    ties = np.searchsorted(unlabelled, chosen, side="right") - below
    return float(np.mean((below + 0.5 * ties) / len(unlabelled)))


def shared_threshold(scores: np.ndarray, labelled: np.ndarray, recall: float = TARGET_RECALL) -> float:
    """The decision rule every method shares: the score above which ``recall`` (0.9) of the
    labelled validation positives lie.

    Under SCAR the labelled positives are a uniform sample of all positives, so this fixes the
    *true* recall near 0.9 without negatives or a class prior; precision is then what the
    classifier's ranking earns. We measured the alternatives on the dev sets' validation truth
    (never test): maximising Lee & Liu's r^2/P(y_hat=1) over thresholds, with or without a
    minimum recall, and the quantile at an estimated prior were all worse or far noisier
    with the ~12 labelled validation positives SMS has at 10 % labelling; see the README.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labelled = np.asarray(labelled).astype(bool)
    if not labelled.any():
        raise ValueError("the threshold rule needs labelled positives in the validation split")
    return float(np.quantile(scores[labelled], 1.0 - recall, method="linear"))


# The labelled-set threshold: the F1-optimal threshold on the labelled set, shrunk toward the
# 90 %-recall rule with the weight of this many labelled positives (few positives: an
# F1-optimal cut is noise). Measured in benchmarks/threshold_rule.py on held-out training rows.
THRESHOLD_SHRINK = 10.0


def f1_optimal_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The cut that maximises F1 on (scores, truth): half-way between the last score predicted
    positive and the next one (ties kept together)."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth).astype(bool)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp = np.cumsum(t)
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a cut can only fall between distinct scores
    k = np.arange(1, len(s) + 1)
    f1 = np.where(last_of_tie, 2 * tp / (k + t.sum()), -1.0)
    best = int(np.argmax(f1))
    return float(s[best] if best == len(s) - 1 else (s[best] + s[best + 1]) / 2)


def labelled_threshold(scores: np.ndarray, truth: np.ndarray, pu_threshold: float,
                       shrink: float = THRESHOLD_SHRINK) -> float:
    """The F1-optimal threshold on a labelled validation set, shrunk toward the PU rule's
    ``pu_threshold``: weight n_pos / (n_pos + shrink) on the labelled set's cut."""
    n_pos = float(np.asarray(truth).astype(bool).sum())
    weight = n_pos / (n_pos + shrink) if n_pos + shrink > 0 else 1.0
    return weight * f1_optimal_threshold(scores, truth) + (1.0 - weight) * pu_threshold


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """The mean, over the positives, of the precision among the rows scored at least as high (tied
    rows count together, so the value does not depend on their order); NaN without positives."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a tie's rows share the precision at its end
    hits, seen = np.cumsum(y)[last_of_tie], np.flatnonzero(last_of_tie) + 1
    positives_in_tie = np.diff(np.r_[0, hits])
    return float(np.sum(positives_in_tie * hits / seen) / labels.sum())


def labelled_fitness(metric: str, scores: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    """Fitness on a labelled validation set: ROC-AUC, F1 at the run's threshold, or average precision."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        return float("nan")
    if metric == "auc":
        return roc_auc(scores, truth)
    if metric == "f1":
        return classification_metrics(scores, truth, threshold)["f1"]
    if metric == "ap":
        return average_precision(scores, truth)
    raise UsageError(f"unknown --val-metric {metric!r}; choose from {VAL_METRICS}")


def _rates(scores, labelled, threshold):
    scores = np.asarray(scores, dtype=np.float64)
    labelled = np.asarray(labelled).astype(bool)
    recall = float((scores[labelled] >= threshold).mean())
    predicted = float((scores >= threshold).mean())
    return recall, predicted


def pu_fitness(
    name: str,
    scores: np.ndarray,
    labelled: np.ndarray,
    prior: float | None = None,
    truth: np.ndarray | None = None,
) -> float:
    """Validation fitness ``name`` of one classifier's validation scores (higher is better)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        return float("nan")
    labelled = np.asarray(labelled).astype(bool)
    if name == "pu_auc":
        return roc_auc(scores, labelled)
    if name == "pu_pauc":
        return partial_pu_auc(scores, labelled)
    threshold = shared_threshold(scores, labelled)
    recall, predicted = _rates(scores, labelled, threshold)
    if name == "lee_liu":
        return recall**2 / predicted
    if name in FITNESS_NEEDS_PRIOR:
        if prior is None:
            raise UsageError(f"fitness {name!r} needs the class prior (--prior, or benchmark data)")
        if name == "pu_accuracy":
            return 1.0 - predicted + 2.0 * prior * recall - prior
        return 2.0 * prior * recall / (prior + predicted)
    if name == "truth_val_f1":
        if truth is None:
            raise UsageError("truth_val_f1 needs the truth 'label' (benchmark mode)")
        return classification_metrics(scores, truth, threshold)["f1"]
    raise UsageError(f"unknown fitness {name!r}; choose from {PU_FITNESS + TRUTH_FITNESS}")


def classification_metrics(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """F1, accuracy, precision, recall at ``threshold`` and the threshold-free ROC-AUC."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth).astype(bool)
    predicted = scores >= threshold
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "f1": f1,
        "accuracy": float((predicted == truth).mean()),
        "precision": precision,
        "recall": recall,
        "auc": roc_auc(scores, truth),
    }


# -- pairwise preferences ---------------------------------------------------------------------


def preference_metrics(prob_a: np.ndarray, p: np.ndarray, length_controlled: np.ndarray) -> dict[str, float]:
    """How a scorer's P(a better) matches the labels' p.

    ``agreement``: share of pairs where the scorer picks the side the label prefers (pairs with
    p = 0.5 have no side and are left out); ``agreement_lc``: the same on the length-controlled
    pairs; ``brier`` and ``ece`` (10 equal-width bins) against p, reported when labels are soft.
    """
    prob_a = np.asarray(prob_a, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    lc = np.asarray(length_controlled, dtype=bool)
    decided = p != 0.5
    correct = (prob_a > 0.5) == (p > 0.5)
    out = {
        "pairs": int(len(p)),
        "agreement": float(correct[decided].mean()) if decided.any() else float("nan"),
        "pairs_lc": int((decided & lc).sum()),
        "agreement_lc": float(correct[decided & lc].mean()) if (decided & lc).any() else float("nan"),
    }
    if ((p > 0) & (p < 1)).any():
        out["brier"] = float(np.mean((prob_a - p) ** 2))
        bins = np.minimum((prob_a * 10).astype(int), 9)
        out["ece"] = float(sum(abs(prob_a[bins == k].mean() - p[bins == k].mean()) * (bins == k).mean()
                               for k in range(10) if (bins == k).any()))
    return out
