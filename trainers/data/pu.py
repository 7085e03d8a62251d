"""PU labelling (benchmark mode) and the validation split a PU user can actually make.

Benchmark mode (the data has the truth ``label``): a fraction ``labelled_frac`` of the
positives is drawn uniformly at random (SCAR) to be the labelled positives; the rest of the
data is unlabelled. Real mode (the data has ``labelled``): those labels are used as given.

The validation split is carved from the training data using only labelled-vs-unlabelled,
never the truth: the same fraction of labelled and of unlabelled points goes to validation.
The truth, where present, is carried along for reporting only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainers.data.shards import LABEL, LABELLED, DataError, EmbeddingTable

# Independent random streams derived from one run seed, so changing how one is used never
# shifts another.
_LABELLING_STREAM, _SPLIT_STREAM = 1, 2


@dataclass
class PUSplit:
    """Training and validation parts of a PU data set.

    ``*_truth`` is None in real mode; it is used for the oracle and for reporting, never for
    fitting a PU method or choosing anything.
    """

    x_train: np.ndarray
    train_labelled: np.ndarray  # bool
    x_val: np.ndarray
    val_labelled: np.ndarray  # bool
    train_truth: np.ndarray | None
    val_truth: np.ndarray | None
    source: str

    @property
    def true_prior(self) -> float | None:
        """P(y = 1) from the truth of the training data (benchmark mode only)."""
        if self.train_truth is None:
            return None
        return float(np.concatenate([self.train_truth, self.val_truth]).mean())

    @property
    def dim(self) -> int:
        return self.x_train.shape[1]

    def summary(self) -> str:
        return (
            f"{len(self.x_train)} train ({int(self.train_labelled.sum())} labelled positives), "
            f"{len(self.x_val)} validation ({int(self.val_labelled.sum())} labelled positives), dim {self.dim}"
        )


def pu_labels(table: EmbeddingTable, labelled_frac: float, seed: int) -> np.ndarray:
    """The labelled-positive mask: given (``labelled`` column) or drawn SCAR from the truth."""
    if table.labelled is not None:
        labelled = table.labelled.astype(bool)
        if not labelled.any():
            raise DataError(table.source, "no labelled positives (no row has 1)", LABELLED)
        return labelled
    if table.label is None:
        raise DataError(table.source, f"need '{LABELLED}' or '{LABEL}'", LABELLED)
    if not 0.0 < labelled_frac <= 1.0:
        raise ValueError(f"--labelled-frac must be in (0, 1], got {labelled_frac}")
    positives = np.flatnonzero(table.label == 1)
    if len(positives) == 0:
        raise DataError(table.source, "no positives (no row has 1), so no labelled positives can be drawn", LABEL)
    rng = np.random.default_rng([seed, _LABELLING_STREAM])
    n = max(1, int(round(labelled_frac * len(positives))))
    labelled = np.zeros(len(table), dtype=bool)
    labelled[rng.choice(positives, size=n, replace=False)] = True
    return labelled


def make_pu_split(table: EmbeddingTable, labelled_frac: float = 0.1, seed: int = 0, val_frac: float = 0.2) -> PUSplit:
    if not 0.0 < val_frac < 1.0:
        raise ValueError(f"val_frac must be in (0, 1), got {val_frac}")
    labelled = pu_labels(table, labelled_frac, seed)
    if labelled.sum() < 2:
        raise DataError(table.source, "need at least 2 labelled positives (one to train, one to validate)",
                        LABELLED if table.labelled is not None else LABEL)
    if (~labelled).sum() < 2:
        raise DataError(table.source, "need at least 2 unlabelled rows", LABELLED if table.labelled is not None else LABEL)
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    in_val = np.zeros(len(table), dtype=bool)
    for group in (np.flatnonzero(labelled), np.flatnonzero(~labelled)):
        n_val = min(max(1, int(round(val_frac * len(group)))), len(group) - 1)
        in_val[rng.choice(group, size=n_val, replace=False)] = True
    truth = table.label
    return PUSplit(
        x_train=table.x[~in_val],
        train_labelled=labelled[~in_val],
        x_val=table.x[in_val],
        val_labelled=labelled[in_val],
        train_truth=None if truth is None else truth[~in_val],
        val_truth=None if truth is None else truth[in_val],
        source=table.source,
    )
