"""Validation fitness that needs no negatives, the shared threshold rule, and test metrics.

Scores are classifier logits (any monotone score works). Everything here is numpy.

PU-only fitness (higher is better), all computed from labelled-vs-unlabelled alone:
- ``pu_auc``: ROC-AUC of labelled positives against unlabelled points. Under SCAR it equals
  (1 - pi') * AUC + pi' / 2 with pi' the positive share of the unlabelled set, so it ranks
  classifiers exactly as the true AUC does. The default.
- ``lee_liu``: Lee & Liu's r^2 / P(y_hat = 1) at the shared threshold (r: recall on labelled
  positives). Proportional to precision * recall; needs no prior.
- ``pu_accuracy``, ``pu_f1``: accuracy and F1 estimated from r and P(y_hat = 1) when the class
  prior pi is known: TP = pi r, FP = P(y_hat=1) - pi r, FN = pi (1 - r).
``truth_val_f1`` (benchmark mode only) uses the truth of the validation split. It exists to study
the proxies and is never a default.
"""
from __future__ import annotations

import numpy as np

PU_FITNESS = ("pu_auc", "lee_liu", "pu_accuracy", "pu_f1")
TRUTH_FITNESS = ("truth_val_f1",)
FITNESS_NEEDS_PRIOR = ("pu_accuracy", "pu_f1")
DEFAULT_FITNESS = "pu_auc"


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


def lee_liu_threshold(scores: np.ndarray, labelled: np.ndarray) -> tuple[float, float]:
    """The shared decision rule: the threshold t maximising r(t)^2 / P(score >= t).

    r(t) is the share of labelled positives scoring >= t and P is taken over every validation
    point. Needs neither negatives nor the class prior, so every method uses it. The optimum
    lies at a labelled positive's score (lowering t between two of them only adds predicted
    positives), so those are the candidates. Returns (threshold, criterion).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labelled = np.asarray(labelled).astype(bool)
    candidates = np.unique(scores[labelled])[::-1]  # descending
    if len(candidates) == 0:
        raise ValueError("the threshold rule needs labelled positives in the validation split")
    all_sorted = np.sort(scores)
    lab_sorted = np.sort(scores[labelled])
    recall = (len(lab_sorted) - np.searchsorted(lab_sorted, candidates, side="left")) / len(lab_sorted)
    predicted = (len(all_sorted) - np.searchsorted(all_sorted, candidates, side="left")) / len(all_sorted)
    criterion = recall**2 / predicted
    best = int(np.argmax(criterion))
    return float(candidates[best]), float(criterion[best])


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
    threshold, criterion = lee_liu_threshold(scores, labelled)
    if name == "lee_liu":
        return criterion
    if name in FITNESS_NEEDS_PRIOR:
        if prior is None:
            raise ValueError(f"fitness {name!r} needs the class prior (--prior, or benchmark data)")
        recall, predicted = _rates(scores, labelled, threshold)
        if name == "pu_accuracy":
            return 1.0 - predicted + 2.0 * prior * recall - prior
        return 2.0 * prior * recall / (prior + predicted)
    if name == "truth_val_f1":
        if truth is None:
            raise ValueError("truth_val_f1 needs the truth 'label' (benchmark mode)")
        return classification_metrics(scores, truth, threshold)["f1"]
    raise ValueError(f"unknown fitness {name!r}; choose from {PU_FITNESS + TRUTH_FITNESS}")


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
