"""The PU recipe: loss specs, a population trainer, the epoch loop, and one-run training.

Read top to bottom: how a loss spec (baseline name, JSON file, ``zoo:`` name) is resolved; a
*population* of K selector/discriminator pairs (K candidate losses x folds x seeds, or K = 1)
trained in one vectorised step, each member on its own fold of the data; validation fitness
and the shared threshold; the one epoch loop (:func:`run_epochs`) that ``train-pu``, a search
pack and the Ray Train loops all use; ``train_pu``. No Ray here.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainers.config import DEFAULT_VAL_METRIC, FITNESS_NEEDS_PRIOR, PUConfig
from trainers.data.pu import Fold, LabelledSet, PUData, PUShare, PUSplit, make_pu_split
from trainers.data.shards import EmbeddingTable, read_table
from trainers.data.synthetic import synthetic_pu_problem
from trainers.errors import UsageError
from trainers.files import load_object
from trainers.losses.exact import FAMILY as EXACT_FAMILY, ExactLoss
from trainers.losses.pu import naive_loss, nnpu_loss, pan_losses, upu_loss, vpu_loss
from trainers.losses.taylor import TaylorLoss, taylor_player_losses
from trainers.metrics import classification_metrics, labelled_fitness, labelled_threshold, pu_fitness, shared_threshold
from trainers.models.mlp import StackedMLP
from trainers.zoo import ZOO_PREFIX, zoo_specs, zoo_spec

BASELINES = ("naive", "oracle", "upu", "nnpu", "vpu", "pan")
PU_BASELINES = tuple(m for m in BASELINES if m != "oracle")  # what a user can train: the oracle needs the truth
NEEDS_PRIOR = ("upu", "nnpu")
GAME_METHODS = ("pan", "taylor")  # trained as a selector/discriminator game

__all__ = ["PUConfig", "BASELINES", "PU_BASELINES", "train_pu", "run_epochs", "Population", "TrainTensors", "ValidationSets"]


# -- loss specs --------------------------------------------------------------------------------


def zoo_names() -> list[str]:
    return list(zoo_specs("taylor"))


def resolve_loss(spec: str) -> str | TaylorLoss:
    """A baseline name stays a string; a file or ``zoo:NAME`` becomes a :class:`TaylorLoss`, or
    the name a file of the ``exact`` family holds (a search that exported a hand-made loss)."""
    if spec in BASELINES:
        return spec
    if spec.startswith(ZOO_PREFIX):
        return TaylorLoss.from_dict(zoo_spec(spec, "taylor"))
    if spec.endswith(".json") or Path(spec).exists():
        return load_object(spec, _loss_from_dict, "loss file")
    raise UsageError(f"unknown loss {spec!r}: use one of {BASELINES}, a Taylor loss .json file, or zoo:NAME")


def _loss_from_dict(spec: dict) -> str | TaylorLoss:
    if spec.get("family") != EXACT_FAMILY:
        return TaylorLoss.from_dict(spec)
    name = ExactLoss.from_dict(spec).loss
    if name not in PU_BASELINES:
        raise ValueError(f"no hand-made loss {name!r}; choose from {PU_BASELINES}")
    return name


def loss_label(loss: str | TaylorLoss) -> str:
    return loss if isinstance(loss, str) else loss.name


# -- the population --------------------------------------------------------------------------


EXACT_IN_A_PACK = ("naive", "pan", "upu", "nnpu")  # hand-made losses a Taylor population can train exactly


@dataclass
class Objective:
    """What a population minimises: a baseline, or K Taylor losses (one per member), some of which
    may be hand-made losses trained exactly (a search pack's controls: ``exact[k]`` names the loss
    member k trains instead of its Taylor row; ``prior`` is uPU's and nnPU's)."""

    method: str
    prior: float | None = None
    taylor_coefficients: torch.Tensor | None = None  # [K, T]
    taylor_center: torch.Tensor | None = None  # [K, 4]
    taylor_order: int | None = None
    exact: list[str | None] | None = None  # [K]: None trains the Taylor row
    _exact_rows: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # name -> member rows, on device

    @classmethod
    def taylor(cls, losses: list[TaylorLoss], device: str | torch.device = "cpu") -> "Objective":
        return cls.taylor_candidates(
            [{"order": loss.order, "coefficients": loss.coefficients, "center": loss.center} for loss in losses], device
        )

    @classmethod
    def taylor_candidates(cls, candidates: list[dict], device: str | torch.device = "cpu",
                          prior: float | None = None) -> "Objective":
        """One member per ``{"order", "coefficients", "center"}``, unvalidated (NaN passes through);
        one with an ``"exact"`` loss name trains that loss instead."""
        orders = {c["order"] for c in candidates}
        if len(orders) != 1:
            raise ValueError(f"a population shares one Taylor order, got {sorted(orders)}")
        exact = [c.get("exact") for c in candidates]
        unknown = {e for e in exact if e is not None} - set(EXACT_IN_A_PACK)
        if unknown or (prior is None and set(NEEDS_PRIOR) & set(exact)):
            raise ValueError(f"exact losses in a pack: {sorted(unknown) or 'upu/nnpu without a prior'}")
        return cls(
            method="taylor",
            prior=prior,
            taylor_coefficients=torch.tensor([c["coefficients"] for c in candidates], dtype=torch.float32, device=device),
            taylor_center=torch.tensor([list(c["center"]) for c in candidates], dtype=torch.float32, device=device),
            taylor_order=orders.pop(),
            exact=exact if any(e is not None for e in exact) else None,
        )

    def select(self, rows: torch.Tensor) -> None:
        if self.taylor_coefficients is not None:
            self.taylor_coefficients = self.taylor_coefficients[rows]
            self.taylor_center = self.taylor_center[rows]
        if self.exact is not None:
            self.exact = [self.exact[i] for i in rows.tolist()]
            self._exact_rows = None

    def exact_rows(self, device) -> dict[str, torch.Tensor]:
        """Each exact loss's member rows (built once, not every batch)."""
        if self._exact_rows is None:
            names = dict.fromkeys(e for e in self.exact or [] if e is not None)
            self._exact_rows = {n: torch.tensor([i for i, e in enumerate(self.exact) if e == n], device=device)
                                for n in names}
        return self._exact_rows


@dataclass
class Population:
    """K selector/discriminator pairs trained side by side; member k is (objective k, seed k),
    trained and validated on fold ``member_fold[k]`` of the data."""

    objective: Objective
    seeds: list[int]
    selector: StackedMLP
    discriminator: StackedMLP | None
    optimizer: torch.optim.Optimizer
    generators: list[torch.Generator]  # one per member: batch order
    mix_rngs: list[np.random.Generator]  # one per member: VPU's MixUp weights
    alive: torch.Tensor  # [K] bool: False once a member's loss or weights went non-finite
    member_fold: np.ndarray = None  # [K] index into the folds (all 0 for one split)
    epoch: int = 0
    # Epoch selection on PU validation fitness: each member's best fitness so far, the epoch it
    # came from, and a copy of its selector weights then (only the selector is the classifier).
    best_fitness: np.ndarray | None = None
    best_epoch: np.ndarray | None = None
    best_selector: list[torch.Tensor] | None = None

    def __post_init__(self):
        if self.member_fold is None:
            self.member_fold = np.zeros(self.size, dtype=int)
        if self.best_fitness is None:
            self.best_fitness = np.full(self.size, -np.inf)
            self.best_epoch = np.zeros(self.size, dtype=int)
            self.best_selector = [p.detach().clone() for p in self.selector.parameters()]

    @property
    def size(self) -> int:
        return len(self.seeds)

    def networks(self) -> list[StackedMLP]:
        return [self.selector] + ([self.discriminator] if self.discriminator is not None else [])

    def track_best(self, fitness: np.ndarray) -> None:
        """Keep each member's selector from its best validation epoch so far."""
        improved = np.isfinite(fitness) & (fitness > self.best_fitness)
        if improved.any():
            rows = torch.as_tensor(improved, device=self.alive.device)
            with torch.no_grad():
                for best, p in zip(self.best_selector, self.selector.parameters()):
                    best[rows] = p.detach()[rows]
            self.best_fitness = np.where(improved, fitness, self.best_fitness)
            self.best_epoch = np.where(improved, self.epoch, self.best_epoch)

    def use_best_selector(self) -> None:
        """Load each member's best-epoch selector (members never evaluated keep their weights)."""
        seen = torch.as_tensor(np.isfinite(self.best_fitness), device=self.alive.device)
        with torch.no_grad():
            for best, p in zip(self.best_selector, self.selector.parameters()):
                p[seen] = best[seen]

    def select(self, rows: list[int]) -> None:
        """Keep only members ``rows``, in that order, with their optimiser state (successive
        halving drops members mid-training; AdamW's state is per member, so it slices)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.alive.device)
        with torch.no_grad():
            for net in self.networks():
                for p in net.parameters():
                    state = self.optimizer.state.get(p, {})
                    for key in ("exp_avg", "exp_avg_sq"):
                        if key in state:
                            state[key] = state[key][index]
                    p.data = p.data[index]
                    p.grad = None
                net.members = len(rows)
        self.objective.select(index)
        self.best_selector = [b[index] for b in self.best_selector]
        keep = np.asarray(rows, dtype=int)
        self.seeds = [self.seeds[i] for i in keep]
        self.generators = [self.generators[i] for i in keep]
        self.mix_rngs = [self.mix_rngs[i] for i in keep]
        self.alive = self.alive[index]
        self.member_fold, self.best_fitness, self.best_epoch = self.member_fold[keep], self.best_fitness[keep], self.best_epoch[keep]

    def state_dict(self) -> dict:
        return {
            "selector": self.selector.state_dict(),
            "discriminator": None if self.discriminator is None else self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "mix_rngs": [r.bit_generator.state for r in self.mix_rngs],
            "alive": self.alive.cpu(),
            "epoch": self.epoch,
            "best_fitness": self.best_fitness,
            "best_epoch": self.best_epoch,
            "best_selector": [b.cpu() for b in self.best_selector],
            "seeds": self.seeds,
            "member_fold": self.member_fold,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint of this very population (same members in the same order)."""
        if list(state["seeds"]) != list(self.seeds) or list(state["member_fold"]) != list(self.member_fold):
            raise ValueError("checkpoint belongs to a population with other members")
        self.selector.load_state_dict(state["selector"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)
        for r, s in zip(self.mix_rngs, state["mix_rngs"]):
            r.bit_generator.state = s
        self.alive = state["alive"].to(self.alive.device)
        self.epoch = int(state["epoch"])
        self.best_fitness, self.best_epoch = np.asarray(state["best_fitness"], float), np.asarray(state["best_epoch"], int)
        self.best_selector = [t.to(self.alive.device) for t in state["best_selector"]]


def adamw(params: list[torch.Tensor], cfg: PUConfig) -> torch.optim.Optimizer:
    """AdamW, fused where torch has it: on a CPU its step over a big population is ~10x faster
    than the default loop (measured 5.6 ms vs 66 ms for 28 members), the same arithmetic."""
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # an older torch or a device without the fused kernel
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_population(
    objective: Objective, seeds: list[int], dim: int, cfg: PUConfig, stream: int = 0, member_fold=None
) -> Population:
    """``stream`` shifts only the batch-order streams: data-parallel workers (one stream per rank)
    start from identical weights but draw different batches."""
    k = len(seeds)
    device = torch.device(cfg.device)
    # Member seeds are offset per network so C and D never start from the same weights.
    selector = StackedMLP(k, dim, cfg.hidden, cfg.depth, cfg.dropout, seeds=[10_000 + s for s in seeds]).to(device)
    discriminator = None
    params = list(selector.parameters())
    if objective.method in GAME_METHODS:
        discriminator = StackedMLP(k, dim, cfg.hidden, cfg.depth, cfg.dropout, seeds=[20_000 + s for s in seeds]).to(device)
        params += list(discriminator.parameters())
    optimizer = adamw(params, cfg)
    return Population(
        objective=objective,
        seeds=list(seeds),
        selector=selector,
        discriminator=discriminator,
        optimizer=optimizer,
        generators=[torch.Generator().manual_seed(30_000 + s + 1_000_003 * stream) for s in seeds],
        mix_rngs=[np.random.default_rng([s, 40_000, stream]) for s in seeds],
        alive=torch.ones(k, dtype=torch.bool, device=device),
        member_fold=None if member_fold is None else np.asarray(member_fold, dtype=int),
    )


# -- data on the device ------------------------------------------------------------------------


@dataclass
class TrainTensors:
    """Training data on the device: every row once, and per fold the rows each side of a pair
    is drawn from (labelled positives; unlabelled points).

    Embeddings keep their stored precision (float16 data stays float16: half the memory) and
    are cast to float32 one batch at a time. ``positive`` rows index ``x_positive``, which is
    ``x`` itself except for a data-parallel worker holding only its share of the pool: it keeps
    the (few) labelled positives of every worker in an array of their own."""

    x: torch.Tensor  # [N, dim] float16 or float32
    positive: list[torch.Tensor]  # per fold: rows of labelled positives (true positives for the oracle)
    unlabelled: list[torch.Tensor]  # per fold: rows of unlabelled points (true negatives for the oracle)
    x_positive: torch.Tensor | None = None  # default: x

    def __post_init__(self):
        if self.x_positive is None:
            self.x_positive = self.x

    @classmethod
    def from_folds(
        cls, data: PUData, folds: list[Fold], method: str, device: str | torch.device = "cpu", shard: tuple[int, int] = (0, 1)
    ) -> "TrainTensors":
        """``shard=(rank, world)``: a data-parallel worker takes every world-th unlabelled point."""
        rank, world = shard
        positive, unlabelled = [], []
        for fold in folds:
            if method == "oracle":
                if data.truth is None:
                    raise UsageError("the oracle needs the truth 'label' (benchmark mode)")
                train = np.sort(np.r_[fold.train_positive, fold.train_unlabelled])
                pos, unl = train[data.truth[train] == 1], train[data.truth[train] == 0]
            else:
                pos, unl = fold.train_positive, fold.train_unlabelled
            # Equal shards: every worker must take the same number of steps, or an all-reduce waits for ever.
            unl = unl[: len(unl) // world * world][rank::world]
            positive.append(torch.as_tensor(pos, device=device))
            unlabelled.append(torch.as_tensor(unl, device=device))
        x = torch.as_tensor(data.x, device=device)  # no copy on a CPU; cast per batch
        return cls(x=x, positive=positive, unlabelled=unlabelled)

    @classmethod
    def from_split(cls, split: PUSplit, method: str, device="cpu", shard: tuple[int, int] = (0, 1)) -> "TrainTensors":
        return cls.from_folds(split.data, [split.fold], method, device, shard)


@dataclass
class ValidationSets:
    """Per fold: the validation embeddings, which of them are labelled, and the truth (reporting).

    A data-parallel worker holding a share of the data validates on its own rows ``x[f][rows[f]]``
    (no copy) and ``gather`` joins every worker's scores in rank order, so ``labelled`` and
    ``truth`` describe the joined validation set and every worker computes the same fitness."""

    x: list[np.ndarray]
    labelled: list[np.ndarray]
    truth: list[np.ndarray | None] = field(default_factory=list)
    rows: list[np.ndarray] | None = None  # per fold: rows of x that validate (None: all of x)
    gather: Callable[[np.ndarray], np.ndarray] | None = None  # joins arrays across workers (axis 0)
    # A hand-labelled set, the same for every fold (and whole on every worker): when present it
    # gives the fitness and the threshold; the folds' labelled positives still anchor the threshold.
    labelled_set: LabelledSet | None = None

    @classmethod
    def from_folds(cls, data: PUData, folds: list[Fold]) -> "ValidationSets":
        truth = [None if data.truth is None else data.truth[f.val] for f in folds]
        return cls([data.x[f.val] for f in folds], [f.val_labelled for f in folds], truth, labelled_set=data.labelled_val)

    @classmethod
    def from_split(cls, split: PUSplit) -> "ValidationSets":
        return cls.from_folds(split.data, [split.fold])


def share_data(share: PUShare, method: str, device="cpu", gather: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> tuple[TrainTensors, ValidationSets]:
    """A data-parallel worker's training tensors and validation set, from its share: its own
    unlabelled rows, every worker's labelled positives (few: ``gather`` joins arrays across
    workers in rank order), and the same number of unlabelled rows on every worker -- the
    smallest share's -- so all take the same steps (an all-reduce would wait for ever)."""
    gather = gather or (lambda a: a)
    if method == "oracle":
        raise UsageError("--loss oracle needs the whole truth in one process: train it without --workers")
    train_positive = np.flatnonzero(share.labelled & ~share.in_val)
    unlabelled = np.flatnonzero(~share.labelled & ~share.in_val)
    unlabelled = unlabelled[: int(gather(np.array([len(unlabelled)])).min())]
    x_positive = gather(share.x[train_positive])
    tensors = TrainTensors(
        x=torch.as_tensor(share.x, device=device),
        positive=[torch.arange(len(x_positive), device=device)],
        unlabelled=[torch.as_tensor(unlabelled, device=device)],
        x_positive=torch.as_tensor(x_positive, device=device),
    )
    val_rows = np.flatnonzero(share.in_val)
    truth = None if share.truth is None else gather(share.truth[val_rows])
    val = ValidationSets([share.x], [gather(share.labelled[val_rows])], [truth], rows=[val_rows], gather=gather)
    return tensors, val


# -- one training epoch ------------------------------------------------------------------------


def _epoch_indices(pop: Population, data: TrainTensors, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-member pairing for one epoch: each unlabelled point of the member's fold once
    (shuffled), each paired with a labelled positive drawn with replacement (there are few).
    Returns ([K, S*B], [K, S*B], S, B); S is the same for every member (the smallest fold's)."""
    folds = sorted(set(pop.member_fold.tolist()))
    n_u = min(len(data.unlabelled[f]) for f in folds)
    b = min(batch_size, n_u)
    steps = n_u // b
    u, p = [], []
    for g, f in zip(pop.generators, pop.member_fold):
        order = torch.randperm(len(data.unlabelled[f]), generator=g)[: steps * b]
        draw = torch.randint(len(data.positive[f]), (steps * b,), generator=g)
        u.append(data.unlabelled[f][order.to(data.x.device)])
        p.append(data.positive[f][draw.to(data.x_positive.device)])
    return torch.stack(p), torch.stack(u), steps, b


def _member_losses(pop: Population, xp: torch.Tensor, xu: torch.Tensor, mix: torch.Tensor | None, cfg: PUConfig) -> torch.Tensor:
    """The per-member objective ``[K]`` for one batch of pairs ``xp, xu: [K, B, dim]``."""
    obj, C, D = pop.objective, pop.selector, pop.discriminator
    b = xp.shape[1]
    both = torch.cat([xp, xu], dim=1)  # one pass per network over both sides: fewer, larger matmuls
    zc_p, zc_u = C(both).split(b, dim=1)
    if obj.method in ("naive", "oracle", "upu", "nnpu"):
        return _hand_made_losses(obj.method, None, None, zc_p, zc_u, obj.prior, cfg)
    if obj.method == "vpu":
        mu = mix[..., None]
        with torch.no_grad():
            log_target = torch.log(mix + (1 - mix) * torch.sigmoid(zc_u))
        return vpu_loss(zc_p, zc_u, C(mu * xp + (1 - mu) * xu), log_target, cfg.vpu_lambda)
    # The game: simultaneous updates. Each player's loss sees the other's outputs detached,
    # so one backward pass gives D the gradient of L_D and C the gradient of L_C.
    zd_p, zd_u = D(both).split(b, dim=1)
    if obj.method == "pan":
        return _hand_made_losses("pan", zd_p, zd_u, zc_p, zc_u, obj.prior, cfg)
    d_p, d_u, c_p, c_u = (torch.sigmoid(z) for z in (zd_p, zd_u, zc_p, zc_u))
    w, a, order = obj.taylor_coefficients, obj.taylor_center, obj.taylor_order
    loss_d, _ = taylor_player_losses(w, a, order, d_p, d_u, c_p.detach(), c_u.detach())
    _, loss_c = taylor_player_losses(w, a, order, d_p.detach(), d_u.detach(), c_p, c_u)
    losses = loss_d + loss_c
    if obj.exact is None:
        return losses
    # Exact members' losses replace their Taylor rows (which then carry no gradient).
    for name, k in obj.exact_rows(losses.device).items():
        rows = _hand_made_losses(name, zd_p[k], zd_u[k], zc_p[k], zc_u[k], obj.prior, cfg)
        losses = losses.index_copy(0, k, rows)
    return losses


def _hand_made_losses(name: str, zd_p, zd_u, zc_p, zc_u, prior: float | None, cfg: PUConfig) -> torch.Tensor:
    """Per-member hand-made loss (VPU aside: it needs its MixUp batch) from the logits of C and,
    for PAN's game, of D; a whole population's, or the exact rows of a Taylor one (where the
    other members' discriminators go untouched)."""
    if name in ("naive", "oracle"):
        return naive_loss(zc_p, zc_u)
    if name == "upu":
        return upu_loss(zc_p, zc_u, prior)
    if name == "nnpu":
        return nnpu_loss(zc_p, zc_u, prior, cfg.nnpu_beta, cfg.nnpu_gamma)
    loss_d, _ = pan_losses(zd_p, zd_u, zc_u.detach(), cfg.pan_lambda)  # the game, as _member_losses plays it
    _, loss_c = pan_losses(zd_p.detach(), zd_u.detach(), zc_u, cfg.pan_lambda)
    return loss_d + loss_c


GradientSync = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]


def train_epoch(
    pop: Population, data: TrainTensors, cfg: PUConfig, sync: GradientSync | None = None
) -> dict[str, np.ndarray]:
    """One pass over the unlabelled pool for every member. Returns per-member mean losses.

    ``sync(params, alive) -> alive``, given by a data-parallel worker loop, averages gradients
    across workers (and agrees on which members are alive) between backward and step.
    """
    for net in pop.networks():
        net.train()
    p_idx, u_idx, steps, b = _epoch_indices(pop, data, cfg.batch_size)
    mixes = None
    if pop.objective.method == "vpu":
        mixes = torch.as_tensor(
            np.stack([r.beta(cfg.vpu_alpha, cfg.vpu_alpha, size=steps * b) for r in pop.mix_rngs]),
            dtype=torch.float32,
            device=data.x.device,
        )
    params = [p for group in pop.optimizer.param_groups for p in group["params"]]
    total = torch.zeros(pop.size, device=data.x.device)
    for s in range(steps):
        batch = slice(s * b, (s + 1) * b)
        # Cast per batch: the pool stays in its stored precision (float16 data: half the memory).
        xp, xu = data.x_positive[p_idx[:, batch]].float(), data.x[u_idx[:, batch]].float()
        losses = _member_losses(pop, xp, xu, None if mixes is None else mixes[:, batch], cfg)
        pop.alive &= torch.isfinite(losses)
        pop.optimizer.zero_grad(set_to_none=False)
        torch.where(pop.alive, losses, torch.zeros_like(losses)).sum().backward()
        if sync is not None:
            pop.alive = sync(params, pop.alive)
        if not bool(pop.alive.all()):
            # A diverged member must not poison the step: zero its gradients, tame its weights.
            dead = ~pop.alive
            with torch.no_grad():
                for p in params:
                    p.grad[dead] = 0.0
                    p[dead] = torch.nan_to_num(p[dead], nan=0.0, posinf=0.0, neginf=0.0)
        pop.optimizer.step()
        total += torch.where(pop.alive, losses.detach(), torch.zeros_like(losses))
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(p).flatten(1).all(1) for p in params]).all(0)
        pop.alive &= finite
    pop.epoch += 1
    mean = (total / max(steps, 1)).cpu().numpy()
    mean[~pop.alive.cpu().numpy()] = np.nan
    return {"loss": mean}


# -- validation ------------------------------------------------------------------------------


@torch.no_grad()
def selector_scores(pop: Population, x: np.ndarray | torch.Tensor, chunk: int = 8192, rows: np.ndarray | None = None) -> np.ndarray:
    """Selector logits ``[K, N]`` for every member (NaN rows for diverged members), of ``x`` or
    of its ``rows``; cast to float32 a chunk at a time."""
    pop.selector.eval()
    device = next(pop.selector.parameters()).device
    n = len(x) if rows is None else len(rows)
    parts = [torch.zeros(pop.size, 0, dtype=torch.float32, device=device)]
    for i in range(0, n, chunk):
        part = x[i : i + chunk] if rows is None else x[rows[i : i + chunk]]
        parts.append(pop.selector(torch.as_tensor(part, device=device).float()))
    out = torch.cat(parts, dim=1).double().cpu().numpy()
    out[~pop.alive.cpu().numpy()] = np.nan
    return out


@dataclass
class MemberEvaluation:
    fitness: float  # NaN when diverged
    threshold: float  # logit
    status: str  # "ok" or "diverged"


def evaluate_members(pop: Population, val: ValidationSets, fitness: str, prior: float | None,
                     val_metric: str = DEFAULT_VAL_METRIC) -> list[MemberEvaluation]:
    """Validation fitness and the threshold for each member on its own fold: from PU information
    only, or, when ``val`` holds a labelled set, ``val_metric`` on it and its shrunk F1-optimal
    threshold."""
    results: list[MemberEvaluation | None] = [None] * pop.size
    labelled = val.labelled_set
    labelled_scores = None if labelled is None else selector_scores(pop, labelled.x)
    for f in sorted(set(pop.member_fold.tolist())):
        members = np.flatnonzero(pop.member_fold == f)
        scores = selector_scores(pop, val.x[f], rows=None if val.rows is None else val.rows[f])
        if val.gather is not None:
            scores = val.gather(scores.T).T  # every worker's validation rows, in rank order
        for k in members:
            row = scores[k]
            if not np.isfinite(row).all():
                results[k] = MemberEvaluation(float("nan"), float("nan"), "diverged")
                continue
            threshold = shared_threshold(row, val.labelled[f])
            if labelled is not None:
                threshold = labelled_threshold(labelled_scores[k], labelled.y, threshold)
                value = labelled_fitness(val_metric, labelled_scores[k], labelled.y, threshold)
            else:
                value = pu_fitness(fitness, row, val.labelled[f], prior=prior, truth=val.truth[f] if val.truth else None)
            results[k] = MemberEvaluation(value, threshold, "ok")
    return results


# -- the epoch loop (train-pu, search packs and the Ray Train loops all run this) ---------------

EpochHook = Callable[[Population, dict, list[MemberEvaluation]], None]


def run_epochs(
    pop: Population,
    data: TrainTensors,
    val: ValidationSets,
    cfg: PUConfig,
    until: int,
    prior: float | None = None,
    sync: GradientSync | None = None,
    on_epoch: EpochHook | None = None,
) -> list[MemberEvaluation]:
    """Train every member up to epoch ``until`` (from wherever the population is), evaluating
    after each epoch and keeping each member's best epoch. Stops early once every member has
    diverged. ``on_epoch`` (logging, a checkpoint) sees each epoch's stats and evaluations."""
    evaluations = evaluate_members(pop, val, cfg.fitness, prior, cfg.val_metric) if pop.epoch >= until else []
    while pop.epoch < until:
        stats = train_epoch(pop, data, cfg, sync)
        evaluations = evaluate_members(pop, val, cfg.fitness, prior, cfg.val_metric)
        pop.track_best(np.array([e.fitness for e in evaluations]))
        if on_epoch is not None:
            on_epoch(pop, stats, evaluations)
        if not bool(pop.alive.any()):
            break
    return evaluations


# -- one run -----------------------------------------------------------------------------


def default_data() -> tuple[EmbeddingTable, EmbeddingTable]:
    return synthetic_pu_problem()


def prior_for(method: str, cfg: PUConfig, data: PUData | PUShare) -> float | None:
    """The prior a run is given when its loss or its fitness needs one: --prior, else what the data
    knows (:meth:`PUData.known_prior`: the truth in benchmark mode, else the hand-labelled rows).
    The one rule: in-process, every --workers worker, the --workers driver's check before the job
    starts and the search's inputs all call this."""
    if method not in NEEDS_PRIOR and cfg.fitness not in FITNESS_NEEDS_PRIOR:
        return None
    prior = cfg.prior if cfg.prior is not None else data.known_prior
    if prior is None:
        raise UsageError(f"{method} needs the class prior: pass --prior, or --val with hand-labelled random rows "
                         "to estimate it from (no truth 'label' to take it from)")
    return prior


def member_metric(cfg: PUConfig, labelled_val: LabelledSet | None) -> str:
    """The name of what picks epochs (and, in a search, losses): a labelled set's metric or the PU fitness."""
    return cfg.fitness if labelled_val is None else f"labelled_{cfg.val_metric}"


def validation_summary(data: PUData) -> str:
    """What validated a run, for its results file and report."""
    if data.labelled_val is None:
        return "PU only (labelled positives vs unlabelled)"
    return f"labelled set: {data.labelled_val.summary()}"


def make_objective(loss: str | TaylorLoss, prior: float | None, device) -> Objective:
    return Objective.taylor([loss], device) if isinstance(loss, TaylorLoss) else Objective(loss, prior=prior)


def train_pu(
    cfg: PUConfig,
    train: EmbeddingTable | None = None,
    test: EmbeddingTable | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Train one PU classifier and report validation fitness and (if a test set is given) test metrics.
    The trained population (one member) is in ``result["population"]``."""
    cfg.validate()
    started = time.perf_counter()
    if train is None:
        train, default_test = default_data()
        test = default_test if test is None else test
    loss = resolve_loss(cfg.loss)
    method = loss if isinstance(loss, str) else "taylor"
    split = make_pu_split(train, cfg.labelled_frac, cfg.seed, cfg.val_frac, cfg.labelling, cfg.val_size,
                          read_table(cfg.val, need="label") if cfg.val else None)
    if test is not None and test.dim != split.dim:
        raise UsageError(f"{test.source}: test embeddings have dimension {test.dim}, training has {split.dim}")
    prior = prior_for(method, cfg, split.data)
    log(f"data: {split.source}: {split.summary()}; labelling {cfg.labelling}; validation: {validation_summary(split.data)}")
    metric = member_metric(cfg, split.data.labelled_val)
    pop = build_population(make_objective(loss, prior, cfg.device), [cfg.seed], split.dim, cfg)
    data = TrainTensors.from_split(split, method, cfg.device)
    val = ValidationSets.from_split(split)

    def log_epoch(pop, stats, evaluations):
        if pop.epoch == 1 or pop.epoch % max(1, cfg.epochs // 5) == 0 or pop.epoch == cfg.epochs:
            log(f"epoch {pop.epoch}/{cfg.epochs}  loss {stats['loss'][0]:.4f}  val {metric} {evaluations[0].fitness:.4f}")

    run_epochs(pop, data, val, cfg, cfg.epochs, prior, on_epoch=log_epoch)
    if cfg.select_epoch:
        pop.use_best_selector()
    (member,) = evaluate_members(pop, val, cfg.fitness, prior, cfg.val_metric)
    result = {
        "loss": loss_label(loss),
        "seed": cfg.seed,
        "status": member.status,
        "fitness": member_metric(cfg, split.data.labelled_val),
        "validation": validation_summary(split.data),
        "val_fitness": member.fitness,
        "threshold": float(1 / (1 + math.exp(-member.threshold))) if member.status == "ok" else float("nan"),
        "threshold_logit": member.threshold,
        "prior_used": prior,
        "epoch_used": int(pop.best_epoch[0]) if cfg.select_epoch else pop.epoch,
        "train_source": split.source,
        "n_train": split.n_train,
        "n_labelled": len(split.fold.train_positive),
        "config": asdict(cfg),
    }
    if test is not None and test.label is not None and member.status == "ok":
        (scores,) = selector_scores(pop, test.x)
        metrics = classification_metrics(scores, test.label, member.threshold)
        result.update({f"test_{k}": v for k, v in metrics.items()})
        result["test_source"] = test.source
    result["seconds"] = time.perf_counter() - started
    result["population"] = pop
    return result


def load_tables(train_path: str | None, test_path: str | None) -> tuple[EmbeddingTable | None, EmbeddingTable | None]:
    """Read --train/--test; without --train both come from the built-in default."""
    if train_path is None:
        if test_path is not None:
            raise UsageError("--test needs --train (the built-in default brings its own test split)")
        return None, None
    train = read_table(train_path, need="any")
    test = read_table(test_path, need="label") if test_path else None
    return train, test


def classifier_of(pop: Population, threshold_logit: float, cfg: PUConfig, **details):
    """Member 0's selector as a :class:`trainers.classifier.PUClassifier` that records its loss
    (name and, for a Taylor loss, its terms), its configuration and ``details``."""
    from trainers.classifier import PUClassifier

    return PUClassifier.from_population(pop, 0, threshold_logit, classifier_meta(resolve_loss(cfg.loss), cfg, **details))


def classifier_meta(loss: str | TaylorLoss, cfg: PUConfig, **details) -> dict:
    """What a saved classifier records about its training (in-process or --workers): its loss (name
    and, for a Taylor loss, its terms), its configuration and ``details``."""
    return {"loss": loss_label(loss), "loss_spec": loss.to_dict() if isinstance(loss, TaylorLoss) else loss,
            "config": asdict(cfg), "fitness": cfg.fitness, **details}


def finalise(result: dict, classifier, save: str | None, out: str | None, log: Callable[[str], None]) -> dict:
    """The one end of a PU run (in-process train-pu and --workers): save the classifier (--save,
    a folder or URI) when there is one, then write the results (--out, a file or URI)."""
    from trainers.files import write_json

    if save and classifier is not None:
        classifier.save(save)
        log(f"saved the classifier to {save}")
    if out:
        write_json(out, result)
        log(f"wrote {out}")
    return result
