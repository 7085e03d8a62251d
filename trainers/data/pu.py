"""PU labelling (benchmark mode) and the validation splits a PU user can actually make.

Benchmark mode (the data has the truth ``label``): a fraction ``labelled_frac`` of the
positives is drawn to be the labelled positives; the rest of the data is unlabelled. How they
are drawn is the *labelling* (:data:`LABELLINGS`): ``scar`` uniformly at random; ``sar-group``
with a propensity 5x higher in a random half of the positive groups (the ``group``/``topic``
column, else k-means clusters of the positives' embeddings), as when positives are gathered
from a few directories; ``sar-score`` with a propensity that is a logistic function of the
embedding's projection on a fixed random direction. Real mode (the data has ``labelled``):
those labels are used as given.

A *labelled validation set* (:class:`LabelledSet`: rows with the truth, drawn at random as a
user would hand-label them) is optional: ``--val FILE``, or in benchmark mode ``val_size`` rows
of the training pool drawn at random and removed from training before the labelling.

A validation split (a :class:`Fold`) is carved from the training data using only
labelled-vs-unlabelled, never the truth: the same fraction of labelled and of unlabelled points
goes to validation. A search draws many folds of one data set (cross-fitting: each candidate is
scored on several partitions, re-drawn per pack); ``train-pu`` uses one. Folds hold row
indices, so any number of them share one copy of the embeddings. The truth, where present, is
carried along for reporting only.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from trainers.data.shards import LABEL, LABELLED, DataError, EmbeddingTable, open_shards, read_labels, read_rows
from trainers.config import LABELLINGS
from trainers.errors import DataWarning, UsageError

# Independent random streams derived from one run seed, so changing how one is used never
# shifts another.
_LABELLING_STREAM, _SPLIT_STREAM, _SAMPLE_STREAM, _VAL_STREAM = 1, 2, 3, 4

SAR_GROUP_RATIO = 5.0  # sar-group: a labelled half of the groups is labelled this many times as often
SAR_GROUP_CLUSTERS = 6  # sar-group without a group column: k-means clusters of the positives
SAR_SCORE_SLOPE = 2.0  # sar-score: propensity = sigmoid(slope * z + b), z the standardised projection


@dataclass
class LabelledSet:
    """Rows whose truth a user labelled by hand: a random sample, never the labelled positives."""

    x: np.ndarray  # [n, dim]
    y: np.ndarray  # int8 [n], the truth
    source: str

    def __len__(self) -> int:
        return len(self.y)

    def summary(self) -> str:
        return f"{len(self)} labelled rows ({int(self.y.sum())} positive) from {self.source}"

    @classmethod
    def check(cls, table: EmbeddingTable, dim: int) -> "LabelledSet":
        """A validation table as a labelled set, or one error naming its file and column."""
        if table.label is None:
            raise DataError(table.source, "a labelled validation set needs the truth (1/0)", LABEL)
        if table.dim != dim:
            raise DataError(table.source, f"dimension {table.dim} differs from the training data's {dim}", "embedding")
        if table.label.all() or not table.label.any():
            raise DataError(table.source, "a labelled validation set needs both positives and negatives", LABEL)
        return cls(table.x, table.label.astype(np.int8), table.source)


@dataclass
class PUData:
    """A PU training set: embeddings, the labelled-positive mask, and the truth where known."""

    x: np.ndarray  # [N, dim]
    labelled: np.ndarray  # bool [N]
    truth: np.ndarray | None  # int8 [N]; reporting and the oracle only, never for choosing anything
    source: str
    labelled_val: LabelledSet | None = None  # a hand-labelled validation set, when the user has one

    @classmethod
    def from_table(cls, table: EmbeddingTable, labelled_frac: float, seed: int, labelling: str = "scar",
                   val_size: int = 0, val: EmbeddingTable | None = None) -> "PUData":
        """Label (or take the labels of) ``table``; one error naming the file and column when
        there are too few labelled or unlabelled rows to train and validate. ``val_size`` rows
        (benchmark mode) or the table ``val`` become the labelled validation set; drawn rows
        leave the training data before the labelling, so they never reach training."""
        labelled_val = None
        if val is not None and val_size:
            raise UsageError("--val and --val-size exclude each other: pass one")
        if val_size:
            table, labelled_val = draw_labelled_set(table, val_size, seed)
        elif val is not None:
            labelled_val = LabelledSet.check(val, table.dim)
        labelled = pu_labels(table, labelled_frac, seed, labelling)
        check_counts(table, labelled)
        return cls(table.x, labelled, table.label, table.source, labelled_val)

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    @property
    def true_prior(self) -> float | None:
        """P(y = 1) from the truth (benchmark mode only)."""
        return None if self.truth is None else float(self.truth.mean())

    @property
    def known_prior(self) -> float | None:
        """P(y = 1) as far as the run can know it without --prior: the truth in benchmark mode
        (its best case), else the positive share of the hand-labelled rows. Those are a random
        sample of the data, so the share estimates the prior (sd ~0.024 at 200 rows and a prior
        of 0.13); the labelled positives cannot (their fraction of the positives is unknown)."""
        if self.truth is not None:
            return self.true_prior
        return None if self.labelled_val is None else float(self.labelled_val.y.mean())

    def fold(self, val_frac: float, entropy: Sequence[int]) -> "Fold":
        """A validation split drawn from ``entropy`` (a seed sequence): stratified on labelled
        vs unlabelled, at least one row of each group on each side."""
        if not 0.0 < val_frac < 1.0:
            raise UsageError(f"--val-frac must be in (0, 1), got {val_frac}")
        rng = np.random.default_rng(list(entropy))
        in_val = np.zeros(len(self.x), dtype=bool)
        for group in (np.flatnonzero(self.labelled), np.flatnonzero(~self.labelled)):
            in_val[_validation_draw(rng, group, val_frac)] = True
        train, val = np.flatnonzero(~in_val), np.flatnonzero(in_val)
        return Fold(
            train_positive=train[self.labelled[train]],
            train_unlabelled=train[~self.labelled[train]],
            val=val,
            val_labelled=self.labelled[val],
        )


def check_counts(table: EmbeddingTable, labelled: np.ndarray) -> None:
    """Enough labelled and unlabelled rows to train and validate, or one error naming the column."""
    column = LABELLED if table.labelled is not None else LABEL
    if table.label is not None and bool(table.label.all()):
        warnings.warn(f"{table.source}, column '{LABEL}': every row is positive; with no negatives PU training "
                      "has nothing to separate and test metrics say nothing", DataWarning, stacklevel=3)
    if labelled.sum() < 2:
        raise DataError(table.source, "need at least 2 labelled positives (one to train, one to validate)", column)
    if (~labelled).sum() < 2:
        raise DataError(table.source, "need at least 2 unlabelled rows", column)


def _validation_draw(rng: np.random.Generator, group: np.ndarray, val_frac: float) -> np.ndarray:
    """The rows of ``group`` that validate: the asked share, at least one on each side."""
    n_val = min(max(1, int(round(val_frac * len(group)))), len(group) - 1)
    return rng.choice(group, size=n_val, replace=False)


@dataclass
class Fold:
    """One labelled/validation partition of a :class:`PUData`, as row indices."""

    train_positive: np.ndarray  # labelled positives used for training
    train_unlabelled: np.ndarray
    val: np.ndarray  # validation rows (labelled and unlabelled)
    val_labelled: np.ndarray  # bool, per validation row


@dataclass
class PUSplit:
    """A data set with one fold: what ``train-pu`` trains and validates on."""

    data: PUData
    fold: Fold

    @property
    def source(self) -> str:
        return self.data.source

    @property
    def dim(self) -> int:
        return self.data.dim

    @property
    def true_prior(self) -> float | None:
        return self.data.true_prior

    @property
    def x_val(self) -> np.ndarray:
        return self.data.x[self.fold.val]

    @property
    def val_labelled(self) -> np.ndarray:
        return self.fold.val_labelled

    @property
    def val_truth(self) -> np.ndarray | None:
        return None if self.data.truth is None else self.data.truth[self.fold.val]

    @property
    def n_train(self) -> int:
        return len(self.fold.train_positive) + len(self.fold.train_unlabelled)

    def summary(self) -> str:
        return (
            f"{self.n_train} train ({len(self.fold.train_positive)} labelled positives), "
            f"{len(self.fold.val)} validation ({int(self.fold.val_labelled.sum())} labelled positives), dim {self.dim}"
        )


def draw_labelled_set(table: EmbeddingTable, n: int, seed: int) -> tuple[EmbeddingTable, LabelledSet]:
    """Benchmark mode: ``n`` rows drawn uniformly at random (seeded; as a user labels a random
    sample) become a labelled set; the rest is returned as the training table."""
    if table.label is None:
        raise UsageError("--val-size draws labelled rows from the truth 'label' (benchmark data); "
                         "with your own data pass --val FILE")
    if not 0 < n <= len(table) // 2:
        raise UsageError(f"--val-size must be in [1, {len(table) // 2}] (half of {table.source}'s {len(table)} rows), got {n}")
    rows = np.random.default_rng([seed, _VAL_STREAM]).choice(len(table), size=n, replace=False)
    keep = np.ones(len(table), dtype=bool)
    keep[rows] = False
    picked = EmbeddingTable(table.x[rows], table.label[rows], None, f"{table.source} ({n} random rows)")
    if picked.label.all() or not picked.label.any():
        raise UsageError(f"--val-size {n}: the drawn rows hold only one class; draw more")
    rest = EmbeddingTable(table.x[keep], table.label[keep], None if table.labelled is None else table.labelled[keep],
                          table.source, table.files, None if table.group is None else table.group[keep])
    return rest, LabelledSet(picked.x, picked.label.astype(np.int8), picked.source)


def _round_up(x: float, digits: int = 2) -> float:
    """``x`` rounded up to ``digits`` significant digits (a suggested minimum must not round below it)."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
    return math.ceil(x * scale - 1e-9) / scale


def pu_labels(table: EmbeddingTable, labelled_frac: float, seed: int, labelling: str = "scar") -> np.ndarray:
    """The labelled-positive mask: given (``labelled`` column) or drawn from the truth by
    ``labelling`` (see the module's docstring)."""
    if table.labelled is not None:
        labelled = table.labelled.astype(bool)
        if not labelled.any():
            raise DataError(table.source, "no labelled positives (no row has 1)", LABELLED)
        return labelled
    if table.label is None:
        raise DataError(table.source, f"need '{LABELLED}' or '{LABEL}'", LABELLED)
    if not 0.0 < labelled_frac <= 1.0:
        raise UsageError(f"--labelled-frac must be in (0, 1], got {labelled_frac}")
    positives = np.flatnonzero(table.label == 1)
    if len(positives) == 0:
        raise DataError(table.source, "no positives (no row has 1), so no labelled positives can be drawn", LABEL)
    if labelling not in LABELLINGS:
        raise UsageError(f"--labelling must be one of {LABELLINGS}, got {labelling!r}")
    rng = np.random.default_rng([seed, _LABELLING_STREAM])
    n = max(1, int(round(labelled_frac * len(positives))))
    if n < 2 <= len(positives):  # the option's fault, not the data's: say which to change
        raise UsageError(f"--labelled-frac {labelled_frac:g} draws {n} of {table.source}'s {len(positives)} positives; "
                         f"training and validating need 2: use at least {_round_up(2 / len(positives)):g}")
    labelled = np.zeros(len(table), dtype=bool)
    if labelling == "scar":
        labelled[rng.choice(positives, size=n, replace=False)] = True
    else:
        chosen = _fixed_size_draw(rng, labelling_propensities(table, positives, n, labelling, rng), n)
        labelled[positives[chosen]] = True
    return labelled


def labelling_propensities(table: EmbeddingTable, positives: np.ndarray, n: int, labelling: str,
                           rng: np.random.Generator) -> np.ndarray:
    """Each positive's probability of being labelled under a selection-biased labelling; they sum
    to ``n``, so the labelled fraction is the asked one."""
    if labelling == "sar-group":
        groups = positive_groups(table, positives, rng)
        names = np.unique(groups)
        favoured = rng.permutation(names)[: len(names) // 2]
        weight = np.where(np.isin(groups, favoured), SAR_GROUP_RATIO, 1.0)
        return _calibrate(lambda c: np.minimum(1.0, c * weight), n)
    x = table.x[positives].astype(np.float64)
    direction = rng.standard_normal(x.shape[1])
    z = x @ direction
    z = (z - z.mean()) / (z.std() or 1.0)
    return _calibrate(lambda b: 1.0 / (1.0 + np.exp(-(SAR_SCORE_SLOPE * z + np.log(b)))), n)


def positive_groups(table: EmbeddingTable, positives: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The positives' groups: the data's group column, else k-means clusters of their embeddings.
    A column that gives every positive the same group (one class against the rest) cannot bias the
    labelling, so it falls back to the clusters too."""
    if table.group is not None:
        groups = np.asarray(table.group)[positives]
        if len(np.unique(groups)) > 1:
            return groups
    return kmeans(table.x[positives].astype(np.float64), min(SAR_GROUP_CLUSTERS, len(positives)), rng)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 25) -> np.ndarray:
    """Cluster ids from Lloyd's k-means with k-means++ seeding (seeded by ``rng``)."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    centres = np.array(centres)
    for _ in range(iterations):
        ids = _nearest(x, centres)
        centres = np.array([x[ids == j].mean(0) if (ids == j).any() else centres[j] for j in range(k)])
    return ids


def _nearest(x: np.ndarray, centres: np.ndarray, rows: int = 4096) -> np.ndarray:
    """Each row's nearest centre, a block of rows at a time: the same sums as one [N, k, dim]
    difference, without holding it (a million 768-d positives would need 37 GB)."""
    return np.concatenate([np.argmin(((x[i:i + rows, None, :] - centres[None]) ** 2).sum(-1), axis=1)
                           for i in range(0, len(x), rows)]) if len(x) else np.zeros(0, dtype=np.int64)


def _calibrate(propensity, n: int) -> np.ndarray:
    """``propensity(c)`` (increasing in c > 0) at the c where the propensities sum to ``n``."""
    low, high = 1e-12, 1e12
    for _ in range(200):
        mid = np.sqrt(low * high)
        low, high = (mid, high) if propensity(mid).sum() < n else (low, mid)
    return np.clip(propensity(np.sqrt(low * high)), 1e-9, 1.0 - 1e-9)


def _fixed_size_draw(rng: np.random.Generator, propensity: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` indices, each included with probability close to ``propensity`` (Pareto
    order sampling, Rosen 1997): the ``n`` smallest odds(u) / odds(propensity)."""
    u = rng.random(len(propensity))
    keys = (u / (1.0 - u)) / (propensity / (1.0 - propensity))
    return np.argsort(keys)[:n]


def split_entropy(seed: int, *stream: int) -> list[int]:
    """The seed sequence of a validation split: ``train-pu``'s is ``[seed, 2]``; a search's
    folds add (purpose, pack, fold) so search folds, re-evaluation folds and every pack differ."""
    return [seed, _SPLIT_STREAM, *stream]


def make_pu_split(table: EmbeddingTable, labelled_frac: float = 0.1, seed: int = 0, val_frac: float = 0.2,
                  labelling: str = "scar", val_size: int = 0, val: EmbeddingTable | None = None) -> PUSplit:
    data = PUData.from_table(table, labelled_frac, seed, labelling, val_size, val)
    return PUSplit(data, data.fold(val_frac, split_entropy(seed)))



# -- a data-parallel worker's share, and a sample ---------------------------------------------------


def row_uniform(seed: int, rows: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) for each global row id, from (seed, row id) alone (two rounds
    of splitmix64): any worker draws any row's number without seeing the others."""
    mask = (1 << 64) - 1
    key = np.uint64((seed * 0x9E3779B97F4A7C15 + _SPLIT_STREAM * 0xBF58476D1CE4E5B9) & mask)
    z = np.asarray(rows, dtype=np.uint64) ^ key
    with np.errstate(over="ignore"):
        for _ in range(2):
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class PUShare:
    """One data-parallel worker's part of a PU training set: rows [start, start + len(x)) of
    the whole, with the labelling and validation split every worker agrees on.

    The labelling is the in-process one (``pu_labels`` over the label columns of every row:
    one byte a row). The labelled positives' validation draw is the in-process one too (they are
    few); an unlabelled row validates when :func:`row_uniform` of its global id is below
    ``val_frac`` -- seeded by the row id, so no worker reads another's rows for it."""

    x: np.ndarray  # this worker's rows, stored precision
    start: int
    total: int  # rows in the whole set
    labelled: np.ndarray  # bool, this worker's rows
    truth: np.ndarray | None
    in_val: np.ndarray  # bool, this worker's rows
    true_prior: float | None
    source: str

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    @property
    def known_prior(self) -> float | None:
        return self.true_prior  # --workers takes no labelled rows (see PUData.known_prior)


def read_pu_share(source: str, rank: int, world: int, labelled_frac: float, seed: int, val_frac: float) -> PUShare:
    """Read worker ``rank``'s equal share (rows total*rank/world .. total*(rank+1)/world) and no
    other embeddings."""
    shards = open_shards(source, "any")
    total = shards.rows
    if total < 2 * world:
        raise DataError(source, f"{total} rows cannot be shared by {world} workers")
    labels = read_labels(shards)
    whole = EmbeddingTable(x=np.empty((total, 0), np.float32), label=labels.get(LABEL), labelled=labels.get(LABELLED),
                           source=str(source))
    labelled = pu_labels(whole, labelled_frac, seed)
    check_counts(whole, labelled)
    start, stop = total * rank // world, total * (rank + 1) // world
    val_labelled = _validation_draw(np.random.default_rng(split_entropy(seed)), np.flatnonzero(labelled), val_frac)
    in_val = row_uniform(seed, np.arange(start, stop)) < val_frac
    mine = labelled[start:stop]
    in_val[mine] = np.isin(np.flatnonzero(mine) + start, val_labelled)
    table = read_rows(shards, start, stop)
    truth = None if whole.label is None else whole.label[start:stop].copy()
    prior = None if whole.label is None else float(whole.label.mean())
    return PUShare(table.x, start, total, mine.copy(), truth, in_val, prior, str(source))


def stratified_sample(source: str, n: int, seed: int) -> EmbeddingTable:
    """A seeded sample of about ``n`` rows, stratified: labelled and unlabelled rows (benchmark
    data: positives and negatives by the truth) each keep their share of the whole. Reads the
    label columns, then only the row groups that hold sampled rows, one at a time."""
    shards = open_shards(source, "any")
    labels = read_labels(shards)
    strata = labels[LABELLED] if LABELLED in labels else labels[LABEL]
    total = len(strata)
    if n >= total:
        return read_rows(shards)
    rng = np.random.default_rng([seed, _SAMPLE_STREAM])
    chosen = []
    for value in (1, 0):
        group = np.flatnonzero(strata == value)
        chosen.append(rng.choice(group, size=min(len(group), int(round(n * len(group) / total))), replace=False))
    keep = np.sort(np.concatenate(chosen))
    table = read_rows(shards, keep=keep)
    table.source = f"{source} (a stratified sample of {len(keep)} of {total} rows)"
    return table
