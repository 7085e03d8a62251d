"""The DPO recipe: a config, data and model set-up, one training epoch, evaluation, and an
in-process run. No Ray here: ``trainers/loop.py`` runs the same pieces as a Ray Train job.

Read top to bottom: the config; the loss spec (a name of ``trainers.losses.preference`` or a
preference Taylor JSON file); the model (the built-in tiny one, or ``--model DIR``); the pair
tensors with their reference values computed once; the epoch; evaluation; ``train_dpo``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainers.config import DPOConfig
from trainers.data.pairs import PreferencePairs, split_by_prompt, synthetic_pairs, synthetic_vocabulary
from trainers.losses.preference import (  # noqa: F401 - pair_loss re-exported for the recipe's users
    PREFERENCE_LOSSES, log_ratio_margin, pair_loss, preference_loss, resolve_preference_loss,
)
from trainers.losses.preference_taylor import PreferenceTaylorLoss, preference_taylor_losses
from trainers.metrics import preference_metrics
from trainers.models.preference import (
    EncodedTexts,
    EncoderScorer,
    build_scoring_model,
    encode_texts,
    load_backbone,
    tiny_backbone,
    word_tokenizer,
)

BUILTIN_MODEL = "builtin-tiny"
REFERENCE_FREE = ("bt",)
REEVALUATION_SEED_OFFSET = 100_000  # re-evaluation seeds: never a search's own seed


@dataclass
class DPOPackPlan:
    """How every pack of a DPO search trains its candidates (crosses the Ray boundary).

    Search packs train each loss once, on ``dpo.seed``: the same prompt split, initial weights,
    dropout and batch stream in every pack, so the seed loss ``dpo`` (evaluated first) is already
    each candidate's paired control and retraining it per pack would repeat one number. The
    re-evaluation stage (``seeds`` set) trains every loss once per fresh seed -- a new split,
    initial weights and stream -- beside ``controls`` on the same seed; a fitness is then the mean
    paired margin in agreement over the best control."""

    train: str | None  # pairs; None: the built-in task
    dpo: DPOConfig
    controls: list[dict] = field(default_factory=list)  # [{"name", "order", "coefficients", "center"}]
    seeds: list[int] = field(default_factory=list)  # the re-evaluation stage's; empty in search packs

    @property
    def members_per_unit(self) -> int:
        return max(1, len(self.seeds))

    # A search fitness is the agreement itself; the re-evaluation's is a margin over the controls.
    search_fitness_paired = False

    def for_reevaluation(self, task_options, epochs: int) -> "DPOPackPlan":
        """Fresh seeds, drawn from a range the search never uses (it trains on ``dpo.seed``)."""
        base = self.dpo.seed + REEVALUATION_SEED_OFFSET
        return replace(self, seeds=[base + k for k in range(task_options.reevaluation_seeds)])


def reward_scale(loss: str | PreferenceTaylorLoss, beta: float) -> float:
    """P(a better) = sigmoid(scale * (value_a - ref_a - value_b + ref_b)): beta for the DPO family,
    1 for the reference-free Bradley-Terry score."""
    return 1.0 if loss in REFERENCE_FREE else beta


# -- model --------------------------------------------------------------------------------------


def build_model(cfg: DPOConfig):
    """(scoring model, tokenizer, model label). The built-in model's weights depend on the seed only."""
    if cfg.model is None:
        tokenizer = word_tokenizer(synthetic_vocabulary())
        backbone = tiny_backbone(cfg.mode, len(tokenizer), seed=cfg.seed, max_positions=max(cfg.max_length, 64))
        label = BUILTIN_MODEL
    else:
        backbone, tokenizer = load_backbone(cfg.model, cfg.mode)
        label = str(cfg.model)
    torch.manual_seed(cfg.seed)
    return build_scoring_model(cfg.mode, backbone), tokenizer, label


# -- data ---------------------------------------------------------------------------------------


@dataclass
class PairTensors:
    a: EncodedTexts
    b: EncodedTexts
    p: torch.Tensor  # [N] P(a better)
    length_controlled: np.ndarray  # [N] bool
    reference_a: torch.Tensor | None = None  # [N] the frozen initial model's values, computed once
    reference_b: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.p)

    @property
    def truncated(self) -> int:
        return max(self.a.truncated, self.b.truncated)


def encode_pairs(tokenizer, pairs: PreferencePairs, cfg: DPOConfig) -> PairTensors:
    enc = lambda responses: encode_texts(tokenizer, pairs.prompt, responses, cfg.mode, cfg.max_length, cfg.max_prompt_length)
    return PairTensors(enc(pairs.a), enc(pairs.b), torch.as_tensor(pairs.p, dtype=torch.float32), pairs.length_controlled())


@torch.no_grad()
def values(model, texts: EncodedTexts, batch_size: int, device) -> torch.Tensor:
    """The model's value (score or log pi(y|x)) of every text, in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        index = torch.arange(start, min(start + batch_size, len(texts)))
        out.append(model(*(t.to(device) for t in texts.batch(index))).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def cache_reference(model, data: PairTensors, cfg: DPOConfig, device) -> None:
    """Reference values, once: the model *before* training is the frozen reference.

    An encoder whose head is still all zeros scores every response exactly 0, so its forward
    pass is skipped (on MiniLM that is two passes over every pair saved)."""
    if isinstance(model, EncoderScorer) and not any(bool(q.any()) for q in model.head.parameters()):
        data.reference_a, data.reference_b = torch.zeros(len(data)), torch.zeros(len(data))
        return
    data.reference_a = values(model, data.a, cfg.eval_batch_size, device)
    data.reference_b = values(model, data.b, cfg.eval_batch_size, device)


# -- training -------------------------------------------------------------------------------------


def taylor_pair_loss(coefficients: list[float], center: float):
    """A raw candidate (unvalidated, NaN allowed) of the preference Taylor family as a loss."""
    w = torch.tensor([coefficients], dtype=torch.float32)
    a = torch.tensor([center], dtype=torch.float32)

    def loss(delta, p):
        return preference_taylor_losses(w.to(delta.device), a.to(delta.device), delta, p)[0].mean()

    return loss


GradientSync = Callable[[list[torch.Tensor]], None]


def make_adamw(model, cfg: DPOConfig) -> torch.optim.Optimizer:
    """AdamW; the encoder's zero-initialised head learns at ``head_lr``: at a fine-tuning rate
    (3e-5) a head that starts at 0 barely moves in an epoch, and while it is ~0 the encoder gets
    no gradient either (MiniLM on AlpacaEval stayed at loss log 2 for a whole epoch)."""
    head = [q for name, q in model.named_parameters() if name.startswith("head.")]
    body = [q for name, q in model.named_parameters() if not name.startswith("head.")]
    groups = [{"params": body, "lr": cfg.learning_rate}] + ([{"params": head, "lr": cfg.head_lr}] if head else [])
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def train_epoch(model, optimizer, data: PairTensors, loss, cfg: DPOConfig, generator: torch.Generator, device,
                shard: tuple[int, int] = (0, 1), sync: GradientSync | None = None) -> float:
    """One pass over the pairs in shuffled batches. Data-parallel workers share ``generator``'s
    seed, so they agree on the shuffle and each takes an equal slice of every batch."""
    model.train()
    rank, world = shard
    order = torch.randperm(len(data), generator=generator)
    global_batch = cfg.batch_size * world
    steps = max(1, len(order) // global_batch) if len(order) >= world else 0
    params = [q for q in model.parameters() if q.requires_grad]
    total = 0.0
    for step in range(steps):
        index = order[step * global_batch:(step + 1) * global_batch][rank::world]
        a = model(*(t.to(device) for t in data.a.batch(index)))
        b = model(*(t.to(device) for t in data.b.batch(index)))
        ref_a, ref_b = data.reference_a[index].to(device), data.reference_b[index].to(device)
        value = pair_loss(loss, a, b, ref_a, ref_b, data.p[index].to(device), cfg)
        optimizer.zero_grad(set_to_none=False)
        value.backward()
        if sync is not None:
            sync(params)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        total += float(value.detach())
    return total / max(steps, 1)


def prob_a_better(value_a, value_b, ref_a, ref_b, scale: float) -> np.ndarray:
    margin = scale * log_ratio_margin(value_a, value_b, ref_a, ref_b)
    return torch.sigmoid(margin.double()).numpy()


def evaluate(model, data: PairTensors, scale: float, cfg: DPOConfig, device) -> dict:
    """Agreement (overall and length-controlled), Brier/ECE for soft labels, and pairs/s."""
    started = time.perf_counter()
    a = values(model, data.a, cfg.eval_batch_size, device)
    b = values(model, data.b, cfg.eval_batch_size, device)
    seconds = time.perf_counter() - started
    prob = prob_a_better(a, b, data.reference_a, data.reference_b, scale)
    if not np.isfinite(prob).all():
        return {"pairs": len(data), "agreement": float("nan"), "status": "diverged"}
    out = preference_metrics(prob, data.p.numpy(), data.length_controlled)
    out.update(status="ok", pairs_per_second=len(data) / max(seconds, 1e-9))
    return out


# -- one in-process run -------------------------------------------------------------------------------


def default_pairs(seed: int = 0) -> tuple[PreferencePairs, PreferencePairs]:
    """The built-in task: 3000 training pairs and 1000 test pairs drawn with another seed."""
    return synthetic_pairs(3000, seed=seed), synthetic_pairs(1000, seed=seed + 10_000)


@dataclass
class Prepared:
    model: torch.nn.Module
    tokenizer: object
    model_label: str
    train: PairTensors
    val: PairTensors
    split_sizes: tuple[int, int]


def prepare(cfg: DPOConfig, pairs: PreferencePairs, device) -> Prepared:
    """Sample (``max_pairs``), split by prompt, build the model, encode both splits, cache the
    reference values."""
    if cfg.max_pairs is not None and len(pairs) > cfg.max_pairs:
        pairs = pairs.take(np.sort(np.random.default_rng(cfg.seed).choice(len(pairs), cfg.max_pairs, replace=False)))
    train_pairs, val_pairs = split_by_prompt(pairs, cfg.val_frac, cfg.seed)
    model, tokenizer, label = build_model(cfg)
    model.to(device)
    train, val = encode_pairs(tokenizer, train_pairs, cfg), encode_pairs(tokenizer, val_pairs, cfg)
    cache_reference(model, train, cfg, device)
    cache_reference(model, val, cfg, device)
    return Prepared(model, tokenizer, label, train, val, (len(train_pairs), len(val_pairs)))


EpochHook = Callable[["Run", dict], None]


def run_epochs(run: "Run", prep: "Prepared", loss, cfg: DPOConfig, device, shard: tuple[int, int] = (0, 1),
               sync: GradientSync | None = None, on_epoch: EpochHook | None = None) -> None:
    """The one DPO epoch loop (``train_dpo``, ``train-dpo``'s Ray job and a search pack): train,
    evaluate on the validation prompts, record (keeping the best epoch), until ``cfg.epochs`` or
    the loss or the scores go non-finite. ``on_epoch(run, record)`` reports or logs."""
    scale = reward_scale(loss, cfg.effective_beta)
    while run.epoch < cfg.epochs:
        t0 = time.perf_counter()
        train_loss = train_epoch(run.model, run.optimizer, prep.train, loss, cfg, run.generator, device, shard, sync)
        train_seconds = time.perf_counter() - t0
        val = evaluate(run.model, prep.val, scale, cfg, device)
        record = {"train_loss": train_loss, "train_seconds": train_seconds, **val}
        run.record(record)
        record.update(epoch=run.epoch, run_finished=run.epoch >= cfg.epochs or not _healthy(train_loss, val))
        if on_epoch is not None:
            on_epoch(run, record)
        if not _healthy(train_loss, val):
            break


def _healthy(train_loss: float, val: dict) -> bool:
    return math.isfinite(train_loss) and val["status"] == "ok"


def diverged(best_state: dict | None, history: list[dict]) -> bool:
    """The one definition of a diverged run (train-dpo in-process and on Ray, a search pack, the
    final report): an epoch whose training loss or validation was not finite, or no good epoch
    at all. Training stops at the first such epoch; the best earlier epoch does not rescue it."""
    return best_state is None or not all(_healthy(h["train_loss"], h) for h in history)


def train_dpo(cfg: DPOConfig, pairs: PreferencePairs | None = None, test: PreferencePairs | None = None,
              log: Callable[[str], None] = lambda m: None, loss=None) -> dict:
    """Train in this process and keep the epoch with the best validation agreement.

    ``loss`` overrides ``cfg.loss`` with a callable ``(delta, p) -> loss`` (a search candidate).
    Returns metrics; the trained model is in ``result["model"]``.
    """
    cfg.validate()
    started = time.perf_counter()
    if pairs is None:
        pairs, default_test = default_pairs(cfg.seed)
        test = default_test if test is None else test
    loss = loss if loss is not None else resolve_preference_loss(cfg.loss)
    candidates = DPOCandidates.prepare(cfg, pairs, cfg.device)
    prep = candidates.prep
    log(f"data: {pairs.source}: {prep.split_sizes[0]} train / {prep.split_sizes[1]} validation pairs "
        f"(split by prompt), {prep.train.truncated + prep.val.truncated} truncated to {cfg.max_length} tokens")
    run = candidates.train(loss, on_epoch=lambda run, r: log(
        f"epoch {run.epoch}/{cfg.epochs}  loss {r['train_loss']:.4f}  val agreement {r['agreement']:.4f}"))
    ok = not run.diverged
    if ok:
        prep.model.load_state_dict(run.best_state)
    result = {
        "status": "ok" if ok else "diverged",
        "val_agreement": run.best_agreement if ok else float("nan"),
        "history": run.history,
        "model_label": prep.model_label,
        "config": asdict(cfg),
        "model": prep.model,
        "tokenizer": prep.tokenizer,
    }
    if test is not None and ok:
        result["test"] = candidates.test(run, test, loss)
    result["seconds"] = time.perf_counter() - started
    return result


def clone_state(module: torch.nn.Module) -> dict:
    """A detached CPU copy of ``module``'s weights (a best epoch, a pack's initial weights)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@dataclass
class DPOCandidates:
    """Losses trained one after another on data prepared once (tokenised, reference values
    computed), each from the same initial weights and dropout stream (``Run.start``), so a result
    does not depend on its place: a search pack's candidates, or the final report's best loss and dpo.
    Pair mode's twin is :class:`trainers.pair.PairCandidates`."""

    prep: Prepared
    cfg: DPOConfig
    device: torch.device
    initial: dict

    @classmethod
    def prepare(cls, cfg: DPOConfig, pairs: PreferencePairs, device) -> "DPOCandidates":
        prep = prepare(cfg, pairs, torch.device(device))
        return cls(prep, cfg, torch.device(device), clone_state(prep.model))

    def train(self, loss, shard: tuple[int, int] = (0, 1), sync: "GradientSync | None" = None,
              on_epoch: "EpochHook | None" = None) -> "Run":
        self.prep.model.load_state_dict(self.initial)
        run = Run.start(self.prep.model, self.cfg)
        run_epochs(run, self.prep, loss, self.cfg, self.device, shard, sync, on_epoch)
        return run

    def test(self, run: "Run", test: PreferencePairs, loss) -> dict:
        """The run's best epoch on ``test``; {} for a diverged run (it has no model to score)."""
        if run.diverged:
            return {}
        self.prep.model.load_state_dict(run.best_state)
        data = encode_pairs(self.prep.tokenizer, test, self.cfg)
        # The built-in reference scores are cached from the *initial* model; rebuild it for test.
        reference, _, _ = build_model(self.cfg)
        cache_reference(reference.to(self.device), data, self.cfg, self.device)
        return evaluate(self.prep.model, data, reward_scale(loss, self.cfg.effective_beta), self.cfg, self.device)


# -- a run that can stop and resume (used by the Ray Train loop) ---------------------------------


@dataclass
class Run:
    """What a checkpoint holds: the model and optimiser, the shuffle stream, the epoch, and the
    weights from the best validation epoch so far (the scorer that gets saved)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0
    best_agreement: float = -math.inf
    best_state: dict | None = None
    history: list | None = None

    @classmethod
    def start(cls, model, cfg: DPOConfig) -> "Run":
        torch.manual_seed(cfg.seed)  # dropout: every run of these options draws the same stream
        return cls(model, make_adamw(model, cfg), torch.Generator().manual_seed(cfg.seed), history=[])

    def record(self, epoch_metrics: dict) -> None:
        self.epoch += 1
        self.history.append({"epoch": self.epoch, **epoch_metrics})
        agreement = epoch_metrics.get("agreement", float("nan"))
        if epoch_metrics.get("status") == "ok" and agreement > self.best_agreement:
            self.best_agreement = agreement
            self.best_state = clone_state(self.model)

    @property
    def diverged(self) -> bool:
        return diverged(self.best_state, self.history)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "epoch": self.epoch, "best_agreement": self.best_agreement,
                "best_state": self.best_state, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch, self.best_agreement = int(state["epoch"]), float(state["best_agreement"])
        self.best_state, self.history = state["best_state"], list(state["history"])


def save_scorer(folder: str | Path, cfg: DPOConfig, best_state: dict, loss_label: str) -> None:
    """Write the trained scorer: the policy at its best validation epoch, the tokenizer, and in
    causal mode (DPO family) the frozen reference, rebuilt from the same initial weights."""
    from trainers.models.preference import REFERENCE_FOLDER, backbone_of, save_scoring_model

    loss = loss_label  # only "is it reference-free?" matters here
    model, tokenizer, model_label = build_model(cfg)
    reference = backbone_of(model)
    uses_reference = cfg.mode == "causal" and loss not in REFERENCE_FREE
    if uses_reference:
        reference.save_pretrained(Path(folder) / REFERENCE_FOLDER)
        tokenizer.save_pretrained(Path(folder) / REFERENCE_FOLDER)
    model.load_state_dict(best_state)
    save_scoring_model(model, tokenizer, folder, {
        "format_version": 1,
        "mode": cfg.mode,
        "loss": loss_label,
        "beta": cfg.effective_beta,
        "reward_scale": reward_scale(loss, cfg.effective_beta),
        "uses_reference": uses_reference,
        "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length,
        "base_model": model_label,
    })
