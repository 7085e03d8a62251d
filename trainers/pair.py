"""The pair-mode recipe (``train-dpo --mode pair``): cache the frozen lower layers' token states
of every distinct text once, then fine-tune the top ``k`` layers and a pair head over the cache.

Read top to bottom: the model set-up; the texts of a pair set; filling the cache (with a
progress callback); loading a batch's states; the training epoch (resumable mid-epoch: a run
records the step it reached and the shuffle it was in); evaluation; serving-side encoding from
raw text; saving and loading a pair scorer. No Ray here: ``trainers/loop.py`` runs it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainers.config import DPOConfig
from trainers.data.pairs import PreferencePairs, split_by_prompt, synthetic_vocabulary
from trainers.data.state_cache import StateCache
from trainers.dpo import EpochHook, GradientSync, clone_state, diverged
from trainers.metrics import preference_metrics
from trainers.models.pair import (
    PairJudge,
    cpu_runs_bf16,
    lower_key,
    lower_states,
    pad_windows,
    prob_from_logit,
    quantize_lower,
    side_features,
    split_encoder,
    text_windows,
    truncated_count,
)
from trainers.models.preference import load_backbone, tiny_backbone, word_tokenizer

Progress = Callable[[dict], None]


# -- model -----------------------------------------------------------------------------------------


def load_full_backbone(cfg: DPOConfig, positions: int | None = None):
    """(encoder, tokenizer): the built-in tiny BERT (weights from the seed; ``positions`` long,
    a window by default) or ``--model``."""
    if cfg.model is None:
        tokenizer = word_tokenizer(synthetic_vocabulary())
        positions = max(positions or cfg.window + 2, 64)
        return tiny_backbone("encoder", len(tokenizer), seed=cfg.seed, max_positions=positions), tokenizer
    return load_backbone(cfg.model, "encoder")


@dataclass
class PairModel:
    """A judge that reads both answers, as the pair-run code below drives it (cross mode's
    :class:`trainers.cross.CrossModel` is the other): ``judge`` (the trained module, its
    fine-tuned encoder layers named ``top``), ``tokenizer``, and the methods below."""

    lower: torch.nn.Module  # frozen, maybe int8
    judge: PairJudge  # trained
    tokenizer: object
    cache_key: str

    def text_budget(self, cfg: DPOConfig) -> int:
        """Tokens an answer keeps; longer ones are truncated (and counted)."""
        return cfg.window * cfg.max_windows

    def prepare_cache(self, cfg: DPOConfig, texts: list[str], progress: Progress | None = None):
        """(the cache, its statistics): every text's lower-layer states computed once."""
        cache = open_cache(cfg, self)
        return cache, fill_cache(self, cache, texts, cfg, progress)

    def batch_logits(self, cache: StateCache | None, data: "PairTexts", index: torch.Tensor, ia: torch.Tensor,
                     ib: torch.Tensor, cfg: DPOConfig, device) -> torch.Tensor:
        """Logits of pairs (ia[i], ib[i]) of ``data`` (``index``: the pairs, unused here: the
        prompt is not read): each distinct text of the batch encoded once."""
        used, inverse = torch.unique(torch.cat([ia, ib]), return_inverse=True)
        texts = [data.texts[i] for i in used.tolist()]
        if cache is None:
            h = encode_raw(self, texts, cfg, device)
        else:
            states, lengths, owner = load_states(self, cache, texts, cfg, device)
            h = self.judge.encode(states, lengths, owner, len(texts))
        features = data.features.to(device)
        n = len(ia)
        return self.judge.logit(h[inverse[:n]], h[inverse[n:]], features[ia], features[ib])

    def all_logits(self, cache: StateCache | None, data: "PairTexts", cfg: DPOConfig, device) -> torch.Tensor:
        """Every pair of ``data``: texts encoded once each (from the cache, or from raw text
        without one), then the head over all pairs."""
        h = []
        for start in range(0, len(data.texts), cfg.eval_batch_size):
            texts = data.texts[start:start + cfg.eval_batch_size]
            if cache is None:
                h.append(encode_raw(self, texts, cfg, device))
            else:
                h.append(self.judge.encode(*load_states(self, cache, texts, cfg, device), len(texts)))
        h = torch.cat(h)
        features = data.features.to(device)
        return self.judge.logit(h[data.a], h[data.b], features[data.a], features[data.b])


def build_pair_model(cfg: DPOConfig, backbone=None, tokenizer=None) -> PairModel:
    if backbone is None:
        backbone, tokenizer = load_full_backbone(cfg)
    lower, top = split_encoder(backbone, cfg.top_layers)
    key = lower_key(lower, cfg.window, cfg.max_windows, cfg.quantize_lower, cfg.cache_dtype)  # float weights
    if cfg.quantize_lower:
        lower = quantize_lower(lower)
    torch.manual_seed(cfg.seed)
    return PairModel(lower, PairJudge(top, backbone.config.hidden_size, bf16=cfg.bf16 and cpu_runs_bf16()), tokenizer, key)


# -- the texts of a set of pairs -----------------------------------------------------------------------


@dataclass
class PairTexts:
    """Pairs as indices into a table of distinct texts, with each text's side features."""

    texts: list[str]
    prompts: list[str]  # [N] each pair's prompt
    a: torch.Tensor  # [N] index of answer a
    b: torch.Tensor
    p: torch.Tensor  # [N] P(a better)
    length_controlled: np.ndarray
    features: torch.Tensor  # [n_texts, F]
    truncated_texts: int

    def __len__(self) -> int:
        return len(self.p)

    @classmethod
    def build(cls, pairs: PreferencePairs, tokenizer, budget: int) -> "PairTexts":
        """``budget``: the tokens an answer keeps (the judge's ``text_budget``), to count truncations."""
        texts = sorted(set(pairs.a) | set(pairs.b))  # sorted: the same set gives the same order
        where = {t: i for i, t in enumerate(texts)}
        counts = np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]], dtype=np.int64)
        return cls(texts, list(pairs.prompt), torch.tensor([where[t] for t in pairs.a]),
                   torch.tensor([where[t] for t in pairs.b]), torch.as_tensor(pairs.p, dtype=torch.float32),
                   pairs.length_controlled(), torch.as_tensor(side_features(texts, counts)),
                   truncated_count(counts, budget))


# -- the cache ---------------------------------------------------------------------------------------


def open_cache(cfg: DPOConfig, model: PairModel) -> StateCache:
    return StateCache(cfg.cache_dir, model.cache_key, cfg.cache_dtype)


def encode_windows(model: PairModel, texts: list[str], cfg: DPOConfig):
    """Lower-layer states of ``texts``: per text ``(states [w, T, H], lengths [w])``.

    Each text's windows go through the layers as a batch of their own. Dynamic int8 quantises
    activations with one scale per batch, so a text encoded beside others got states that
    depended on them (by up to 1.3 in one state, MiniLM) and a cached text's states on the order
    the cache was filled in: two runs of one seed differed, and so did the scorer from the run's
    own test scores. Alone, a text's states are the same in every run, cache and scorer, and
    no slower (35 against 31-33 texts/s on 2 CPUs: nothing is padded to another text's length)."""
    windows, _ = text_windows(model.tokenizer, texts, cfg.window, cfg.max_windows)
    out = []
    for ws in windows:
        ids, attention = pad_windows(ws, model.tokenizer.pad_token_id or 0)
        lengths = attention.sum(1)
        out.append((lower_states(model.lower, ids, attention).float().numpy(), lengths.numpy()))
    return out


def fill_cache(model: PairModel, cache: StateCache, texts: list[str], cfg: DPOConfig,
               progress: Progress | None = None, every_seconds: float = 30.0) -> dict:
    """Compute and store the states of every text not validly cached yet (damaged files are
    deleted and recomputed), in chunks of ``cache_batch`` texts between progress checks."""
    started = time.perf_counter()
    # In the order given: each text is encoded alone (encode_windows), so the order saves no padding;
    # longest first only made the early rate, and so the ETA, too pessimistic.
    missing = [t for t in texts if not cache.valid(t)]
    done, last = 0, started
    chunk = max(1, cfg.cache_batch)
    for start in range(0, len(missing), chunk):
        part = missing[start:start + chunk]
        for text, (states, lengths) in zip(part, encode_windows(model, part, cfg)):
            cache.put(text, states, lengths)
        done += len(part)
        if progress is not None and (time.perf_counter() - last > every_seconds or done == len(missing)):
            last = time.perf_counter()
            rate = done / max(last - started, 1e-9)
            progress({"phase": "caching", "done": done, "total": len(missing), "texts_per_second": rate,
                      "eta_seconds": (len(missing) - done) / max(rate, 1e-9)})
    seconds = time.perf_counter() - started
    return {"texts": len(texts), "computed": len(missing), "rebuilt": cache.rebuilt, "cache_seconds": seconds,
            "caching_texts_per_second": len(missing) / seconds if missing and seconds > 0 else float("nan")}


def load_states(model: PairModel, cache: StateCache, texts: list[str], cfg: DPOConfig, device):
    """``(states [W, T, H] float32, lengths [W], owner [W])`` of ``texts`` from the cache; a text
    whose file is gone or damaged is recomputed (and stored again)."""
    parts = []
    for text in texts:
        entry = cache.get(text)
        if entry is None:
            entry = encode_windows(model, [text], cfg)[0]
            cache.put(text, *entry)
        parts.append(entry)
    return stack_windows(parts, device)


def stack_windows(parts, device):
    width = max(states.shape[1] for states, _ in parts)
    hidden = parts[0][0].shape[2]
    total = sum(states.shape[0] for states, _ in parts)
    out = torch.zeros(total, width, hidden)
    lengths, owner, row = [], [], 0
    for i, (states, lens) in enumerate(parts):
        out[row:row + states.shape[0], :states.shape[1]] = torch.from_numpy(np.array(states, dtype=np.float32))
        lengths.extend(int(x) for x in lens)
        owner.extend([i] * states.shape[0])
        row += states.shape[0]
    return out.to(device), torch.tensor(lengths, device=device), torch.tensor(owner, device=device)


# -- training ------------------------------------------------------------------------------------------


@dataclass
class PairRun:
    """What a checkpoint holds: weights, optimiser, the shuffle of the current epoch and the step
    reached in it, the best validation epoch's weights, the history."""

    judge: PairJudge
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0
    step: int = 0  # steps done in the current epoch
    epoch_loss: float = 0.0  # summed over those steps
    epoch_start_state: torch.Tensor | None = None  # the generator before this epoch's shuffle
    best_agreement: float = -math.inf
    best_state: dict | None = None
    history: list = field(default_factory=list)

    @classmethod
    def start(cls, judge: PairJudge, cfg: DPOConfig) -> "PairRun":
        top = [q for name, q in judge.named_parameters() if name.startswith("top.")]
        head = [q for name, q in judge.named_parameters() if not name.startswith("top.")]
        optimizer = torch.optim.AdamW([{"params": top, "lr": cfg.learning_rate}, {"params": head, "lr": cfg.head_lr}],
                                      weight_decay=cfg.weight_decay)
        return cls(judge, optimizer, torch.Generator().manual_seed(cfg.seed))

    @property
    def diverged(self) -> bool:
        return diverged(self.best_state, self.history)

    def state_dict(self) -> dict:
        names = ("epoch", "step", "epoch_loss", "epoch_start_state", "best_agreement", "best_state", "history")
        return {"model": self.judge.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), **{n: getattr(self, n) for n in names}}

    def load_state_dict(self, state: dict) -> None:
        self.judge.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        for name in ("epoch", "step", "epoch_loss", "epoch_start_state", "best_agreement", "best_state", "history"):
            setattr(self, name, state[name])


def epoch_plan(run: PairRun, n: int, cfg: DPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """This epoch's order and swap flags, drawn from the generator as it was when the epoch
    began (a resumed run redraws the same ones)."""
    if run.epoch_start_state is None:
        run.epoch_start_state = run.generator.get_state()
    generator = torch.Generator().set_state(run.epoch_start_state)
    order = torch.randperm(n, generator=generator)
    swap = torch.rand(n, generator=generator) < 0.5 if cfg.swap else torch.zeros(n, dtype=torch.bool)
    run.generator.set_state(generator.get_state())
    return order, swap


def train_pair_epoch(run: PairRun, model: PairModel, cache: StateCache, data: PairTexts, loss, cfg: DPOConfig,
                     device, shard: tuple[int, int] = (0, 1), sync=None, progress: Progress | None = None,
                     checkpoint: Callable[[PairRun], None] | None = None) -> float:
    """The rest of the current epoch from ``run.step``. ``checkpoint(run)`` every
    ``cfg.checkpoint_minutes``; ``progress`` gets a line's worth of numbers with it."""
    from trainers.losses.preference import pair_loss

    rank, world = shard
    order, swap = epoch_plan(run, len(data), cfg)
    global_batch = cfg.batch_size * world
    steps = max(1, len(order) // global_batch)
    params = [q for q in run.judge.parameters() if q.requires_grad]
    run.judge.train()
    started, last, first = time.perf_counter(), time.perf_counter(), run.step
    zeros = torch.zeros(cfg.batch_size, device=device)
    while run.step < steps:
        index = order[run.step * global_batch:(run.step + 1) * global_batch][rank::world]
        flip = swap[index]
        ia, ib = torch.where(flip, data.b[index], data.a[index]), torch.where(flip, data.a[index], data.b[index])
        p = torch.where(flip, 1 - data.p[index], data.p[index]).to(device)
        torch.manual_seed(cfg.seed * 1_000_003 + run.epoch * 100_003 + run.step)  # dropout: same after a resume
        z = model.batch_logits(cache, data, index, ia, ib, cfg, device)
        value = pair_loss(loss, z, zeros[:len(z)], zeros[:len(z)], zeros[:len(z)], p, cfg)
        run.optimizer.zero_grad(set_to_none=False)
        value.backward()
        if sync is not None:
            sync(params)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        run.optimizer.step()
        run.step += 1
        run.epoch_loss += float(value.detach())
        if time.perf_counter() - last > 60 * cfg.checkpoint_minutes or run.step == steps:
            last = time.perf_counter()
            rate = (run.step - first) * global_batch / max(last - started, 1e-9)
            if progress is not None:
                progress({"phase": "training", "epoch": run.epoch + 1, "done": run.step * global_batch,
                          "total": steps * global_batch, "train_pairs_per_second": rate,
                          "eta_seconds": (steps - run.step) * global_batch / max(rate, 1e-9),
                          "train_loss": run.epoch_loss / run.step})
            if checkpoint is not None and run.step < steps:
                checkpoint(run)
    mean = run.epoch_loss / steps
    run.epoch, run.step, run.epoch_loss, run.epoch_start_state = run.epoch + 1, 0, 0.0, None
    return mean


# -- evaluation and serving ----------------------------------------------------------------------------


@torch.no_grad()
def pair_logits(model: PairModel, cache: StateCache | None, data: PairTexts, cfg: DPOConfig, device) -> np.ndarray:
    """Logits of every pair of ``data``, in eval mode."""
    was_training = model.judge.training
    model.judge.eval()
    z = model.all_logits(cache, data, cfg, device)
    model.judge.train(was_training)
    return z.double().cpu().numpy()


def evaluate_pairs(model: PairModel, cache: StateCache | None, data: PairTexts, cfg: DPOConfig, device) -> dict:
    started = time.perf_counter()
    prob = prob_from_logit(pair_logits(model, cache, data, cfg, device))
    seconds = time.perf_counter() - started
    if not np.isfinite(prob).all():
        return {"pairs": len(data), "agreement": float("nan"), "status": "diverged"}
    out = preference_metrics(prob, data.p.numpy(), data.length_controlled)
    out.update(status="ok", pairs_per_second=len(data) / max(seconds, 1e-9))
    return out


def encode_raw(model: PairModel, texts: list[str], cfg: DPOConfig, device) -> torch.Tensor:
    """``h`` of ``texts`` straight from raw text (lower layers, then top layers): no cache."""
    parts = encode_windows(model, texts, cfg)
    return model.judge.encode(*stack_windows(parts, device), len(texts))


# -- one run: prepare, epochs -----------------------------------------------------------------------


@dataclass
class PairPrepared:
    model: PairModel
    cache: StateCache
    train: PairTexts
    val: PairTexts
    cache_stats: dict


def prepare_pair(cfg: DPOConfig, pairs: PreferencePairs, device, progress: Progress | None = None,
                 build: Callable[[DPOConfig], PairModel] | None = None) -> PairPrepared:
    """Sample (``max_pairs``), split by prompt, build the judge (pair mode's, or ``build``'s:
    ``trainers.judges``), fill its cache for both splits."""
    if cfg.max_pairs is not None and len(pairs) > cfg.max_pairs:
        pairs = pairs.take(np.sort(np.random.default_rng(cfg.seed).choice(len(pairs), cfg.max_pairs, replace=False)))
    train_pairs, val_pairs = split_by_prompt(pairs, cfg.val_frac, cfg.seed)
    model = (build or build_pair_model)(cfg)
    model.judge.to(device)
    budget = model.text_budget(cfg)
    train, val = PairTexts.build(train_pairs, model.tokenizer, budget), PairTexts.build(val_pairs, model.tokenizer, budget)
    model.judge.set_side_scale(train.features.numpy())
    cache, stats = model.prepare_cache(cfg, sorted(set(train.texts) | set(val.texts)), progress)
    return PairPrepared(model, cache, train, val, stats)


def run_pair_epochs(run: PairRun, prep: PairPrepared, loss, cfg: DPOConfig, device, shard=(0, 1), sync=None,
                    progress: Progress | None = None, checkpoint: Callable[[PairRun], None] | None = None,
                    on_epoch: Callable[[PairRun, dict], None] | None = None) -> None:
    """Train, evaluate on the validation prompts, record (keeping the best epoch), until
    ``cfg.epochs`` or non-finite numbers; a run restored mid-epoch finishes that epoch first."""
    while run.epoch < cfg.epochs:
        t0 = time.perf_counter()
        train_loss = train_pair_epoch(run, prep.model, prep.cache, prep.train, loss, cfg, device, shard, sync,
                                      progress, checkpoint)
        train_seconds = time.perf_counter() - t0
        val = evaluate_pairs(prep.model, prep.cache, prep.val, cfg, device)
        record = {"epoch": run.epoch, "train_loss": train_loss, "train_seconds": train_seconds,
                  "train_pairs_per_second": len(prep.train) / max(train_seconds, 1e-9), **val}
        run.history.append(record)
        if val["status"] == "ok" and val["agreement"] > run.best_agreement:
            run.best_agreement = val["agreement"]
            run.best_state = clone_state(run.judge)
        healthy = math.isfinite(train_loss) and val["status"] == "ok"
        record["run_finished"] = run.epoch >= cfg.epochs or not healthy
        if on_epoch is not None:
            on_epoch(run, record)
        if not healthy:
            break


@dataclass
class PairCandidates:
    """Pair mode's :class:`trainers.dpo.DPOCandidates`: losses trained one after another over one
    filled cache, each from the same initial judge (dropout is seeded per step already)."""

    prep: PairPrepared
    cfg: DPOConfig
    device: torch.device
    initial: dict

    @classmethod
    def prepare(cls, cfg: DPOConfig, pairs: PreferencePairs, device, build=None) -> "PairCandidates":
        prep = prepare_pair(cfg, pairs, device, build=build)
        return cls(prep, cfg, torch.device(device), clone_state(prep.model.judge))

    def train(self, loss, shard: tuple[int, int] = (0, 1), sync: GradientSync | None = None,
              on_epoch: EpochHook | None = None) -> PairRun:
        self.prep.model.judge.load_state_dict(self.initial)
        run = PairRun.start(self.prep.model.judge, self.cfg)
        run_pair_epochs(run, self.prep, loss, self.cfg, self.device, shard, sync, on_epoch=on_epoch)
        return run

    def test(self, run: PairRun, test: PreferencePairs, loss) -> dict:
        """The run's best epoch on ``test``; {} for a diverged run. The test texts' lower-layer
        states go into the cache (computed once for every loss scored, as training's are; the same
        numbers as from raw text, ``tests/test_dpo_pair.py``): a search's final report scores two
        losses, and encoding a large test split twice from raw text took longer than the search.
        ``loss`` is unused: a pair judge's logit is its probability's, whatever loss trained it."""
        if run.diverged:
            return {}
        self.prep.model.judge.load_state_dict(run.best_state)
        data = PairTexts.build(test, self.prep.model.tokenizer, self.prep.model.text_budget(self.cfg))
        fill_cache(self.prep.model, self.prep.cache, sorted(set(data.texts)), self.cfg)
        return evaluate_pairs(self.prep.model, self.prep.cache, data, self.cfg, self.device)


# -- the saved pair scorer ---------------------------------------------------------------------------

JUDGE_FILE = "pair_judge.pt"


def save_judge_scorer(folder: str | Path, backbone, tokenizer, best_state: dict, meta: dict) -> None:
    """A judge's scorer folder: ``backbone`` (the whole encoder, fine-tuned layers loaded) in
    Hugging Face format, the rest of the judge's state, and ``scorer.json``."""
    from trainers.files import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save({k: v for k, v in best_state.items() if not k.startswith("top.")}, folder / JUDGE_FILE)
    write_json(folder / "scorer.json", meta)


def save_pair_scorer(folder: str | Path, cfg: DPOConfig, best_state: dict, meta: dict) -> None:
    """The whole encoder (the original lower layers, the fine-tuned top ones), the judge's head
    and side-feature scale, and ``scorer.json``."""
    from trainers.models.preference import quiet_transformers

    quiet_transformers()
    backbone, tokenizer = load_full_backbone(cfg)
    layers = backbone.encoder.layer
    cut = len(layers) - cfg.top_layers
    top_state = {k[len("top."):]: v for k, v in best_state.items() if k.startswith("top.")}
    torch.nn.ModuleList(list(layers)[cut:]).load_state_dict(top_state)
    save_judge_scorer(folder, backbone, tokenizer, best_state,
                      {**meta, "mode": "pair", "top_layers": cfg.top_layers, "window": cfg.window,
                       "max_windows": cfg.max_windows, "quantize_lower": cfg.quantize_lower, "bf16": cfg.bf16,
                       "max_length": cfg.window * cfg.max_windows, "max_prompt_length": 0})


def load_judge_head(judge: torch.nn.Module, folder: Path) -> None:
    """The saved head (and side-feature scale) into ``judge``, whose ``top`` came with the encoder.
    Read as data only (``load_state``): a scorer folder is a file anyone may hand a user."""
    from trainers.checkpoints import load_state
    from trainers.errors import DataError

    head = load_state(folder / JUDGE_FILE, "judge's head")
    try:
        judge.load_state_dict({**{f"top.{k}": v for k, v in judge.top.state_dict().items()}, **head})
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(folder / JUDGE_FILE, f"cannot load the judge's head (not this scorer's weights): {first}") from None
    judge.eval()


def load_pair_model(folder: str | Path, meta: dict) -> tuple[PairModel, DPOConfig]:
    from trainers.errors import DataError
    from trainers.models.preference import scorer_int

    folder = Path(folder)
    window, max_windows = scorer_int(meta, folder, "window", 1), scorer_int(meta, folder, "max_windows", 1)
    if "quantize_lower" not in meta:  # how the scorer's lower layers ran when it was trained
        raise DataError(folder / "scorer.json", "missing", "quantize_lower", kind="field")
    backbone, tokenizer = load_backbone(folder, "encoder")
    top_layers = scorer_int(meta, folder, "top_layers", 1, len(backbone.encoder.layer))
    cfg = DPOConfig(mode="pair", model=str(folder), top_layers=top_layers, window=window, max_windows=max_windows,
                    quantize_lower=bool(meta["quantize_lower"]), bf16=bool(meta.get("bf16", False)))
    model = build_pair_model(cfg, backbone, tokenizer)
    load_judge_head(model.judge, folder)
    return model, cfg


# -- the rule to beat -----------------------------------------------------------------------------------


def length_format_rule(train: PreferencePairs, test: PreferencePairs, tokenizer, l2: float = 1e-3) -> dict:
    """The baseline beside "the longer answer wins": a logistic regression, fitted on the
    training pairs, over the differences of the side features (length in tokens and characters,
    list items, newlines, code blocks, headers). No bias: swapping the answers flips it."""
    def differences(pairs: PreferencePairs) -> torch.Tensor:
        texts = list(pairs.a) + list(pairs.b)
        counts = np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]])
        f = side_features(texts, counts)
        return torch.as_tensor(f[:len(pairs)] - f[len(pairs):], dtype=torch.float64)

    predict = fit_difference_model(differences(train), train.p, l2)
    return preference_metrics(prob_from_logit(predict(differences(test))), test.p, test.length_controlled())


def fit_difference_model(x: torch.Tensor, p, l2: float = 1e-3) -> Callable[[torch.Tensor], np.ndarray]:
    """A logistic regression without bias over per-pair feature differences f(a) - f(b)
    (standardised), fitted by L-BFGS: swapping the answers negates its logit. Returns the
    logit function for new differences."""
    x, p = x.to(torch.float64), torch.as_tensor(p, dtype=torch.float64)
    scale = x.std(0).clamp_min(1e-6)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits((x / scale) @ w, p) + l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    w = w.detach()
    return lambda new: ((new.to(torch.float64) / scale) @ w).numpy()
