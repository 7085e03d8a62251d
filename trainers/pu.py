"""The PU recipe: a config, a population trainer, and one-run training with honest metrics.

Read top to bottom: the config; how a loss spec (baseline name, JSON file, ``zoo:`` name) is
resolved; a *population* of K selector/discriminator pairs (K candidate losses x seeds, or K = 1)
trained in one vectorised step; validation fitness and the shared threshold; test metrics.

The same population code serves ``lossforge train-pu`` (K = 1, in-process) and every search
trial (K candidates packed into one Ray Train worker). No Ray here.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainers.data.pu import PUSplit, make_pu_split
from trainers.data.shards import EmbeddingTable, read_table
from trainers.data.synthetic import synthetic_pu_problem
from trainers.losses.pu import naive_loss, nnpu_loss, pan_losses, upu_loss, vpu_loss
from trainers.losses.taylor import TaylorLoss, taylor_player_losses
from trainers.metrics import DEFAULT_FITNESS, classification_metrics, shared_threshold, pu_fitness
from trainers.models.mlp import StackedMLP

BASELINES = ("naive", "oracle", "upu", "nnpu", "vpu", "pan")
NEEDS_PRIOR = ("upu", "nnpu")
GAME_METHODS = ("pan", "taylor")  # trained as a selector/discriminator game
ZOO_PREFIX = "zoo:"


@dataclass
class PUConfig:
    loss: str = "pan"  # a baseline name, a Taylor loss JSON file, or zoo:NAME
    labelled_frac: float = 0.1  # benchmark mode: share of positives that are labelled (SCAR)
    prior: float | None = None  # class prior for upu/nnpu; benchmark mode defaults to the truth
    seed: int = 0  # PU labelling, split, initial weights and batch order
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    depth: int = 2
    dropout: float = 0.0
    val_frac: float = 0.2
    fitness: str = DEFAULT_FITNESS
    # Keep the epoch with the best PU validation fitness (labelled vs unlabelled only), as
    # early stopping would; without it, methods that overfit the few labelled positives
    # (VPU, PAN) are judged on their collapsed last epoch.
    select_epoch: bool = True
    device: str = "cpu"
    # method hyper-parameters
    pan_lambda: float = 0.1  # chosen by PU validation fitness on the default problem (1.0 let C run away)
    nnpu_beta: float = 0.0
    nnpu_gamma: float = 1.0
    vpu_alpha: float = 0.3
    vpu_lambda: float = 0.03

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be at least 1")
        if self.prior is not None and not 0.0 < self.prior < 1.0:
            raise ValueError(f"--prior must be in (0, 1), got {self.prior}")
        if not 0.0 < self.labelled_frac <= 1.0:
            raise ValueError(f"--labelled-frac must be in (0, 1], got {self.labelled_frac}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device")


# -- loss specs --------------------------------------------------------------------------------


def zoo_names() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in resources.files("trainers.zoo").iterdir() if p.name.endswith(".json"))


def resolve_loss(spec: str) -> str | TaylorLoss:
    """A baseline name stays a string; a file or ``zoo:NAME`` becomes a :class:`TaylorLoss`."""
    if spec in BASELINES:
        return spec
    if spec.startswith(ZOO_PREFIX):
        name = spec[len(ZOO_PREFIX) :]
        if name not in zoo_names():
            raise ValueError(f"no loss {spec!r} in the zoo; it has {[ZOO_PREFIX + n for n in zoo_names()]}")
        with resources.as_file(resources.files("trainers.zoo") / f"{name}.json") as path:
            return TaylorLoss.load(path)
    if spec.endswith(".json") or Path(spec).exists():
        if not Path(spec).is_file():
            raise ValueError(f"loss file {spec} does not exist")
        return TaylorLoss.load(spec)
    raise ValueError(f"unknown loss {spec!r}: use one of {BASELINES}, a Taylor loss .json file, or zoo:NAME")


def loss_label(loss: str | TaylorLoss) -> str:
    return loss if isinstance(loss, str) else loss.name


# -- the population --------------------------------------------------------------------------


@dataclass
class Objective:
    """What a population minimises: a baseline, or K Taylor losses (one per member)."""

    method: str
    prior: float | None = None
    taylor_coefficients: torch.Tensor | None = None  # [K, T]
    taylor_center: torch.Tensor | None = None  # [K, 4]
    taylor_order: int | None = None

    @classmethod
    def taylor(cls, losses: list[TaylorLoss], device: str | torch.device = "cpu") -> "Objective":
        return cls.taylor_candidates(
            [{"order": loss.order, "coefficients": loss.coefficients, "center": loss.center} for loss in losses], device
        )

    @classmethod
    def taylor_candidates(cls, candidates: list[dict], device: str | torch.device = "cpu") -> "Objective":
        """One member per ``{"order", "coefficients", "center"}``, unvalidated (NaN passes through)."""
        orders = {c["order"] for c in candidates}
        if len(orders) != 1:
            raise ValueError(f"a population shares one Taylor order, got {sorted(orders)}")
        return cls(
            method="taylor",
            taylor_coefficients=torch.tensor([c["coefficients"] for c in candidates], dtype=torch.float32, device=device),
            taylor_center=torch.tensor([list(c["center"]) for c in candidates], dtype=torch.float32, device=device),
            taylor_order=orders.pop(),
        )


@dataclass
class Population:
    """K selector/discriminator pairs trained side by side; member k is (objective k, seed k)."""

    objective: Objective
    seeds: list[int]
    selector: StackedMLP
    discriminator: StackedMLP | None
    optimizer: torch.optim.Optimizer
    generators: list[torch.Generator]  # one per member: batch order
    mix_rngs: list[np.random.Generator]  # one per member: VPU's MixUp weights
    alive: torch.Tensor  # [K] bool: False once a member's loss or weights went non-finite
    epoch: int = 0
    # Epoch selection on PU validation fitness: each member's best fitness so far, the epoch it
    # came from, and a copy of its selector weights then (only the selector is the classifier).
    best_fitness: np.ndarray | None = None
    best_epoch: np.ndarray | None = None
    best_selector: list[torch.Tensor] | None = None

    def __post_init__(self):
        if self.best_fitness is None:
            self.best_fitness = np.full(self.size, -np.inf)
            self.best_epoch = np.zeros(self.size, dtype=int)
            self.best_selector = [p.detach().clone() for p in self.selector.parameters()]

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

    @property
    def size(self) -> int:
        return len(self.seeds)

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
            "best_selector": self.best_selector,
            "seeds": self.seeds,
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["seeds"]) != list(self.seeds):
            raise ValueError("checkpoint belongs to a population with other seeds")
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
        self.best_fitness, self.best_epoch = state["best_fitness"], state["best_epoch"]
        self.best_selector = [t.to(self.alive.device) for t in state["best_selector"]]


def build_population(objective: Objective, seeds: list[int], dim: int, cfg: PUConfig, stream: int = 0) -> Population:
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
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return Population(
        objective=objective,
        seeds=list(seeds),
        selector=selector,
        discriminator=discriminator,
        optimizer=optimizer,
        generators=[torch.Generator().manual_seed(30_000 + s + 1_000_003 * stream) for s in seeds],
        mix_rngs=[np.random.default_rng([s, 40_000, stream]) for s in seeds],
        alive=torch.ones(k, dtype=torch.bool, device=device),
    )


@dataclass
class TrainTensors:
    """Training data on the device: the pool and the indices of the two sides of each pair."""

    x: torch.Tensor  # [N, dim]
    positive: torch.Tensor  # indices of labelled positives (true positives for the oracle)
    unlabelled: torch.Tensor  # indices of unlabelled points (true negatives for the oracle)

    @classmethod
    def from_split(
        cls, split: PUSplit, method: str, device: str | torch.device = "cpu", shard: tuple[int, int] = (0, 1)
    ) -> "TrainTensors":
        """``shard=(rank, world)``: a data-parallel worker takes every world-th unlabelled point."""
        if method == "oracle":
            if split.train_truth is None:
                raise ValueError("the oracle needs the truth 'label' (benchmark mode)")
            positive, unlabelled = split.train_truth == 1, split.train_truth == 0
        else:
            positive, unlabelled = split.train_labelled, ~split.train_labelled
        rank, world = shard
        # Equal shards: every worker must take the same number of steps, or an all-reduce waits for ever.
        pool = np.flatnonzero(unlabelled)
        pool = pool[: len(pool) // world * world]
        x = torch.as_tensor(split.x_train, dtype=torch.float32, device=device)
        return cls(
            x=x,
            positive=torch.as_tensor(np.flatnonzero(positive), device=device),
            unlabelled=torch.as_tensor(pool[rank::world], device=device),
        )


def _epoch_indices(pop: Population, data: TrainTensors, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-member pairing for one epoch: each unlabelled point once (shuffled), each paired
    with a labelled positive drawn with replacement (there are few). Returns ([K, S*B], [K, S*B], S, B)."""
    n_u, n_p = len(data.unlabelled), len(data.positive)
    b = min(batch_size, n_u)
    steps = n_u // b
    u = torch.stack([torch.randperm(n_u, generator=g)[: steps * b] for g in pop.generators])
    p = torch.stack([torch.randint(n_p, (steps * b,), generator=g) for g in pop.generators])
    device = data.x.device
    return data.positive[p.to(device)], data.unlabelled[u.to(device)], steps, b


def _member_losses(pop: Population, xp: torch.Tensor, xu: torch.Tensor, mix: torch.Tensor | None, cfg: PUConfig) -> torch.Tensor:
    """The per-member objective ``[K]`` for one batch of pairs ``xp, xu: [K, B, dim]``."""
    obj, C, D = pop.objective, pop.selector, pop.discriminator
    zc_p, zc_u = C(xp), C(xu)
    if obj.method in ("naive", "oracle"):
        return naive_loss(zc_p, zc_u)
    if obj.method == "upu":
        return upu_loss(zc_p, zc_u, obj.prior)
    if obj.method == "nnpu":
        return nnpu_loss(zc_p, zc_u, obj.prior, cfg.nnpu_beta, cfg.nnpu_gamma)
    if obj.method == "vpu":
        mu = mix[..., None]
        with torch.no_grad():
            log_target = torch.log(mix + (1 - mix) * torch.sigmoid(zc_u))
        return vpu_loss(zc_p, zc_u, C(mu * xp + (1 - mu) * xu), log_target, cfg.vpu_lambda)
    # The game: simultaneous updates. Each player's loss sees the other's outputs detached,
    # so one backward pass gives D the gradient of L_D and C the gradient of L_C.
    zd_p, zd_u = D(xp), D(xu)
    if obj.method == "pan":
        loss_d, _ = pan_losses(zd_p, zd_u, zc_u.detach(), cfg.pan_lambda)
        _, loss_c = pan_losses(zd_p.detach(), zd_u.detach(), zc_u, cfg.pan_lambda)
        return loss_d + loss_c
    d_p, d_u, c_p, c_u = (torch.sigmoid(z) for z in (zd_p, zd_u, zc_p, zc_u))
    w, a, order = obj.taylor_coefficients, obj.taylor_center, obj.taylor_order
    loss_d, _ = taylor_player_losses(w, a, order, d_p, d_u, c_p.detach(), c_u.detach())
    _, loss_c = taylor_player_losses(w, a, order, d_p.detach(), d_u.detach(), c_p, c_u)
    return loss_d + loss_c


GradientSync = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]


def train_epoch(
    pop: Population, data: TrainTensors, cfg: PUConfig, sync: GradientSync | None = None
) -> dict[str, np.ndarray]:
    """One pass over the unlabelled pool for every member. Returns per-member mean losses.

    ``sync(params, alive) -> alive``, given by a data-parallel worker loop, averages gradients
    across workers (and agrees on which members are alive) between backward and step.
    """
    pop.selector.train()
    if pop.discriminator is not None:
        pop.discriminator.train()
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
        xp, xu = data.x[p_idx[:, batch]], data.x[u_idx[:, batch]]
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


@torch.no_grad()
def selector_scores(pop: Population, x: np.ndarray | torch.Tensor, chunk: int = 8192) -> np.ndarray:
    """Selector logits ``[K, N]`` for every member (NaN rows for diverged members)."""
    pop.selector.eval()
    device = next(pop.selector.parameters()).device
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    out = torch.cat([pop.selector(x[i : i + chunk]) for i in range(0, len(x), chunk)], dim=1).double().cpu().numpy()
    out[~pop.alive.cpu().numpy()] = np.nan
    return out


@dataclass
class MemberEvaluation:
    fitness: float  # NaN when diverged
    threshold: float  # logit
    status: str  # "ok" or "diverged"


def evaluate_members(pop: Population, split: PUSplit, fitness: str, prior: float | None) -> list[MemberEvaluation]:
    """Validation fitness and the shared threshold for each member, from PU information only."""
    scores = selector_scores(pop, split.x_val)
    results = []
    for row in scores:
        if not np.isfinite(row).all():
            results.append(MemberEvaluation(float("nan"), float("nan"), "diverged"))
            continue
        threshold = shared_threshold(row, split.val_labelled)
        value = pu_fitness(fitness, row, split.val_labelled, prior=prior, truth=split.val_truth)
        results.append(MemberEvaluation(value, threshold, "ok"))
    return results


# -- packs of candidate losses (a search trial) ------------------------------------------------

# Told to the optimiser for a candidate that diverged (NaN/inf loss or weights): below every
# fitness we offer (AUCs and accuracies are >= 0, estimated accuracy >= -prior > -1).
DIVERGED_FITNESS = -1.0


def pack_population(candidates: list[dict], seeds: list[int], dim: int, cfg: PUConfig, stream: int = 0) -> Population:
    """A population for K candidates x S seeds (member k*S + j is candidate k with seed j).

    Candidates are ``{"order", "coefficients", "center"}``. Coefficients go in raw, not through
    TaylorLoss's checks: a NaN candidate must train, be marked diverged and be told as a penalty,
    not fail the whole pack.
    """
    objective = Objective.taylor_candidates([c for c in candidates for _ in seeds], cfg.device)
    return build_population(objective, [s for _ in candidates for s in seeds], dim, cfg, stream=stream)


def pack_fitness(pop: Population, split: PUSplit, cfg: PUConfig, prior: float | None, seeds_per_candidate: int):
    """Evaluate the members now and return each candidate's (fitness, status).

    Fitness is the mean over the candidate's seeds of their best-epoch fitness (with epoch
    selection) or current fitness; any diverged seed makes the candidate diverged.
    """
    evaluations = evaluate_members(pop, split, cfg.fitness, prior)
    pop.track_best(np.array([e.fitness for e in evaluations]))
    fitness = pop.best_fitness if cfg.select_epoch else np.array([e.fitness for e in evaluations])
    out = []
    for i in range(0, pop.size, seeds_per_candidate):
        group = slice(i, i + seeds_per_candidate)
        if all(e.status == "ok" for e in evaluations[group]):
            out.append((float(np.mean(fitness[group])), "ok"))
        else:
            out.append((DIVERGED_FITNESS, "diverged"))
    return out


def train_pack(split: PUSplit, candidates: list[dict], seeds: list[int], cfg: PUConfig, prior: float | None = None):
    """In-process: train a pack for cfg.epochs and return each candidate's (fitness, status)."""
    pop = pack_population(candidates, seeds, split.dim, cfg)
    data = TrainTensors.from_split(split, "taylor", cfg.device)
    per_candidate = []
    while pop.epoch < cfg.epochs and bool(pop.alive.any()):
        train_epoch(pop, data, cfg)
        per_candidate = pack_fitness(pop, split, cfg, prior, len(seeds))
    return per_candidate


# -- one run -----------------------------------------------------------------------------


def default_data() -> tuple[EmbeddingTable, EmbeddingTable]:
    return synthetic_pu_problem()


def prior_for(method: str, cfg: PUConfig, split: PUSplit) -> float | None:
    """The prior a method is given: --prior, else in benchmark mode the truth (its best case)."""
    if method not in NEEDS_PRIOR and cfg.fitness not in ("pu_accuracy", "pu_f1"):
        return None
    prior = cfg.prior if cfg.prior is not None else split.true_prior
    if prior is None:
        raise ValueError(f"{method} needs the class prior: pass --prior (no truth 'label' to take it from)")
    return prior


def train_pu(
    cfg: PUConfig,
    train: EmbeddingTable | None = None,
    test: EmbeddingTable | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Train one PU classifier and report validation fitness and (if a test set is given) test metrics."""
    cfg.validate()
    started = time.perf_counter()
    if train is None:
        train, default_test = default_data()
        test = default_test if test is None else test
    loss = resolve_loss(cfg.loss)
    method = loss if isinstance(loss, str) else "taylor"
    split = make_pu_split(train, cfg.labelled_frac, cfg.seed, cfg.val_frac)
    if test is not None and test.dim != split.dim:
        raise ValueError(f"test embeddings have dimension {test.dim}, training has {split.dim}")
    prior = prior_for(method, cfg, split)
    log(f"data: {split.source}: {split.summary()}")
    objective = Objective.taylor([loss], cfg.device) if method == "taylor" else Objective(method, prior=prior)
    pop = build_population(objective, [cfg.seed], split.dim, cfg)
    data = TrainTensors.from_split(split, method, cfg.device)
    for epoch in range(cfg.epochs):
        stats = train_epoch(pop, data, cfg)
        (member,) = evaluate_members(pop, split, cfg.fitness, prior)
        pop.track_best(np.array([member.fitness]))
        if epoch == 0 or (epoch + 1) % max(1, cfg.epochs // 5) == 0 or epoch + 1 == cfg.epochs:
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {stats['loss'][0]:.4f}  val {cfg.fitness} {member.fitness:.4f}")
        if member.status != "ok":
            break
    if cfg.select_epoch:
        pop.use_best_selector()
    (member,) = evaluate_members(pop, split, cfg.fitness, prior)
    result = {
        "loss": loss_label(loss),
        "seed": cfg.seed,
        "status": member.status,
        "fitness": cfg.fitness,
        "val_fitness": member.fitness,
        "threshold": float(1 / (1 + math.exp(-member.threshold))) if member.status == "ok" else float("nan"),
        "threshold_logit": member.threshold,
        "prior_used": prior,
        "epoch_used": int(pop.best_epoch[0]) if cfg.select_epoch else pop.epoch,
        "train_source": split.source,
        "n_train": int(len(split.x_train)),
        "n_labelled": int(split.train_labelled.sum()),
        "config": asdict(cfg),
    }
    if test is not None and test.label is not None and member.status == "ok":
        (scores,) = selector_scores(pop, test.x)
        metrics = classification_metrics(scores, test.label, member.threshold)
        result.update({f"test_{k}": v for k, v in metrics.items()})
        result["test_source"] = test.source
    result["seconds"] = time.perf_counter() - started
    return result


def load_tables(train_path: str | None, test_path: str | None) -> tuple[EmbeddingTable | None, EmbeddingTable | None]:
    """Read --train/--test; without --train both come from the built-in default."""
    if train_path is None:
        if test_path is not None:
            raise ValueError("--test needs --train (the built-in default brings its own test split)")
        return None, None
    train = read_table(train_path, need="any")
    test = read_table(test_path, need="label") if test_path else None
    return train, test
