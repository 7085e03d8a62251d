"""The built-in default PU problem: needs no files, same data on every machine.

A mixture of ``clusters`` Gaussian clusters in a ``latent_dim``-dimensional space; the
positive class is a fixed subset of them (``positive_clusters``), so the class prior is
``positive_clusters / clusters`` = 2/15 ≈ 0.13 by default: positives are rare, as in most of our
users' problems, and that is where the loss matters (naive, unlabelled-as-negative, memorises
the few labelled positives; benchmarks/RESULTS.md, "The first run"). Clusters of both classes
interleave, so no hyperplane separates them. Points are lifted to ``dim`` dimensions by a fixed
random map with a tanh bend, plus isotropic noise, then L2-normalised like sentence embeddings.
``positive_clusters=6`` is the problem of the first releases (prior 0.40).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainers.data.shards import EmbeddingTable


@dataclass(frozen=True)
class SyntheticSpec:
    n_train: int = 6000
    n_test: int = 2000
    dim: int = 128
    latent_dim: int = 4
    clusters: int = 15
    positive_clusters: int = 2
    cluster_spread: float = 0.4
    noise: float = 0.05
    seed: int = 0  # the data set itself; a run's seed only changes labelling and split

    @property
    def prior(self) -> float:
        return self.positive_clusters / self.clusters


def synthetic_pu_problem(spec: SyntheticSpec = SyntheticSpec()) -> tuple[EmbeddingTable, EmbeddingTable]:
    """(train, test) tables with the truth ``label``; PU labels are drawn later, per run seed."""
    rng = np.random.default_rng([spec.seed, 7919])
    centres = rng.normal(size=(spec.clusters, spec.latent_dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    lift = rng.normal(size=(spec.latent_dim, spec.dim)) / np.sqrt(spec.latent_dim)

    def sample(n: int, name: str) -> EmbeddingTable:
        cluster = rng.integers(spec.clusters, size=n)
        z = centres[cluster] + spec.cluster_spread * rng.normal(size=(n, spec.latent_dim)) / np.sqrt(spec.latent_dim)
        x = np.tanh(2.0 * z @ lift) + spec.noise * rng.normal(size=(n, spec.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        label = (cluster < spec.positive_clusters).astype(np.int8)
        return EmbeddingTable(x=x.astype(np.float32), label=label, source=f"<built-in synthetic {name}>")

    return sample(spec.n_train, "train"), sample(spec.n_test, "test")
