"""The preference task: pairwise (DPO-family) Taylor losses searched on preference pairs.

It owns its options (:class:`PreferenceSearchOptions`), reading the pairs, the space, the plan,
the final report on the test pairs and the plot of the best loss.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from typing import Callable

from search.engine.options import SearchOptions
from trainers.config import PREFERENCE_MODES, DPOConfig, absolute_paths, opt
from trainers.errors import UsageError

Log = Callable[[str], None]


@dataclass
class PreferenceSearchOptions:
    mode: str = opt("encoder", "the model kind (pair: the top layers over cached lower-layer states, a head over "
                    "both answers; train-dpo --mode pair's recipe; cross: a full cross-encoder, for GPUs)", choices=PREFERENCE_MODES)
    model: str | None = opt(None, "local Hugging Face model folder (default: the built-in tiny model)")
    lr: float | None = opt(None, "learning rate (default: 1e-3 for the built-in model, 3e-5 for --model)")
    top_layers: int = opt(DPOConfig.top_layers, "--mode pair: layers fine-tuned over the cached states of the ones below")
    cache_dir: str = opt(DPOConfig.cache_dir, "--mode pair: the lower-layer state cache, shared by every pack and run")
    max_pairs: int | None = opt(None, "train on a seeded sample of this many pairs")
    fitness: str = opt("val_agreement", "validation agreement with the labels", choices=("val_agreement",))
    controls: list[str] = opt(["dpo"], "hand-made losses trained beside the elites in the re-evaluation (dpo, sigmoid, "
                                       "brier); an elite's fitness there is its paired margin over the best of them")
    reevaluate: int = opt(3, "elites retrained after the search on fresh seeds, beside the controls (0: none)")
    reevaluation_seeds: int = opt(3, "fresh seeds per elite in the re-evaluation (each a new prompt split, initial "
                                     "weights and batch order)")

    def __post_init__(self) -> None:
        # Train workers run inside their trial folders: a relative folder must mean the driver's
        # (else every pack fills a cache of its own).
        absolute_paths(self, "model", "cache_dir")

    def validate(self, epochs: int) -> None:
        if self.fitness != "val_agreement":
            raise UsageError(f"unknown fitness {self.fitness!r} for --task dpo; choose from ('val_agreement',)")
        if self.max_pairs is not None and self.max_pairs < 2:
            raise UsageError(f"--max-pairs must be at least 2, got {self.max_pairs}")
        if self.reevaluate < 0 or self.reevaluation_seeds < 1:
            raise UsageError(f"need --reevaluate >= 0 and --reevaluation-seeds >= 1, got {self.reevaluate} and "
                             f"{self.reevaluation_seeds}")
        if self.reevaluate and not self.controls:
            raise UsageError("the re-evaluation needs a control to pair with: give --controls dpo (or --reevaluate 0)")
        from trainers.losses.preference_taylor import SEED_FUNCTIONS

        for name in self.controls:
            if name not in SEED_FUNCTIONS:
                raise UsageError(f"--controls: no hand-made preference loss {name!r}; choose from {sorted(SEED_FUNCTIONS)}")


class PreferenceTask:
    """A :class:`search.tasks.Task`."""

    name, options_class = "dpo", PreferenceSearchOptions
    # DPO candidates train a transformer one after another, so a pack is slower per candidate.
    default_epochs = 3
    pack_candidates = 16

    def default_seed_losses(self, order: int) -> list[str]:
        return ["dpo"]

    def space(self, order: int):
        from search.engine.space import PreferenceTaylorSpace

        return PreferenceTaylorSpace(order=order)

    def dpo_config(self, opts: SearchOptions) -> DPOConfig:
        o: PreferenceSearchOptions = opts.task_options
        return DPOConfig(mode=o.mode, model=o.model, epochs=opts.epochs, seed=opts.seed, max_pairs=o.max_pairs, lr=o.lr,
                         top_layers=o.top_layers, cache_dir=o.cache_dir)

    def validate(self, opts: SearchOptions) -> None:
        opts.task_options.validate(opts.epochs)
        if len(opts.train) > 1:
            raise UsageError("--task dpo takes one --train")
        cfg = self.dpo_config(opts)
        cfg.validate()
        cfg.check_workers(opts.workers_per_trial, "--workers-per-trial")

    def smoke(self, opts: SearchOptions) -> SearchOptions:
        return replace(opts, epochs=1, task_options=replace(opts.task_options, max_pairs=600, reevaluate=2,
                                                            reevaluation_seeds=2))

    def read_inputs(self, opts: SearchOptions) -> None:
        from trainers.data.pairs import read_pairs
        from trainers.models.preference import check_preference_model

        check_preference_model(self.dpo_config(opts))
        if opts.train:
            read_pairs(opts.train[0])
        if opts.test:
            read_pairs(opts.test[0])

    def seed_vectors(self, opts: SearchOptions, inputs: None) -> list:
        space = self.space(opts.order)
        return [(n, space.seed_point(n)) for n in opts.seed_losses]

    def pack_cap(self, opts: SearchOptions) -> int:
        return self.pack_candidates

    def plan(self, opts: SearchOptions, inputs: None):
        from trainers.dpo import DPOPackPlan

        space = self.space(opts.order)
        controls = [{"name": n, **space.candidate(space.seed_point(n))} for n in opts.task_options.controls]
        return DPOPackPlan(train=opts.train[0] if opts.train else None, dpo=self.dpo_config(opts), controls=controls)

    def worker_loop(self):
        from trainers.loop import dpo_pack_worker_loop

        return dpo_pack_worker_loop

    def before_search(self, opts: SearchOptions, log: Log) -> None:
        """Pair mode: fill the lower-layer state cache here, once, with progress lines, so that
        packs starting together do not each compute every text (on a cluster, this fills the
        driver's node; other nodes' packs fill their own)."""
        if opts.task_options.mode != "pair":
            return
        from trainers.data.pairs import read_pairs
        from trainers.dpo import default_pairs
        from trainers.pair import prepare_pair

        cfg = self.dpo_config(opts)
        pairs = read_pairs(opts.train[0]) if opts.train else default_pairs(opts.seed)[0]
        log(f"caching the lower layers' states of every text in {cfg.cache_dir} (reused by every pack and later runs)")
        stats = prepare_pair(cfg, pairs, "cpu", progress=lambda m: log(
            f"  texts cached {m['done']}/{m['total']}  {m['texts_per_second']:.1f}/s  ETA {m['eta_seconds'] / 60:.1f} min")).cache_stats
        log(f"cache ready: {stats['texts']} texts, {stats['computed']} computed now")

    def after_search(self, folder: Path, opts: SearchOptions, plan, searcher, log: Log) -> None:
        from search.engine.reevaluation import reevaluate_elites

        if opts.task_options.reevaluate > 0:
            reevaluate_elites(folder, opts, plan, searcher, self.space(opts.order), self.worker_loop(), log)

    def final_report(self, folder: Path, opts: SearchOptions, log: Log) -> dict:
        return final_dpo_report(folder, opts, self.dpo_config(opts), log)

    def plot_best(self, best, path: Path) -> None:
        plot_preference_loss(best, path)


def final_dpo_report(folder: Path, opts, cfg, log=print) -> dict:
    """Train the best loss and plain DPO with the search's settings on data prepared once (in pair
    mode, over the search's cache), and score both on the test pairs."""
    from search.engine.reevaluation import exported_loss_note
    from trainers.data.pairs import read_pairs
    from trainers.dpo import default_pairs
    from trainers.loop import preference_candidates
    from trainers.losses.preference import resolve_preference_loss
    from trainers.losses.preference_taylor import PreferenceTaylorLoss

    note = exported_loss_note(folder)
    if opts.train:
        train, test = read_pairs(opts.train[0]), read_pairs(opts.test[0]) if opts.test else None
    else:
        train, test = default_pairs(opts.seed)
    if test is None:
        log("no --test given: the best loss is not scored on held-out data")
        if note:
            log(note)
        return {}
    log(f"training the best loss and dpo again with the search's settings, then scoring {len(test)} test pairs")
    trainer = preference_candidates(cfg, train, cfg.device)
    report = {}
    for label, loss in (("best", PreferenceTaylorLoss.load(folder / "best_loss.json")), ("dpo", resolve_preference_loss("dpo"))):
        run = trainer.train(loss)
        scored = trainer.test(run, test, loss)
        report[label] = {"val_agreement": run.best_agreement if not run.diverged else float("nan"),
                         "status": "diverged" if run.diverged else "ok",
                         **{f"test_{k}": v for k, v in scored.items() if k in ("agreement", "agreement_lc", "brier")}}
    log("test pairs (scored once, after the search): " + "  ".join(
        f"{k}: agreement {v['test_agreement']:.4f} (length-controlled {v['test_agreement_lc']:.4f})"
        for k, v in report.items() if v.get("test_agreement") is not None))
    if note:
        log(note)
    return report


def plot_preference_loss(best, path: Path) -> None:
    """The searched pairwise loss f(s) against DPO's -log s and its Taylor point, shifted to 0 at s = 1/2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from trainers.losses.preference_taylor import preference_taylor_point

    s = torch.linspace(0.02, 0.98, 97, dtype=torch.float64)
    delta = torch.log(s / (1 - s))  # s = sigmoid(delta)
    ones = torch.ones_like(s)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, loss in (("best", best), ("DPO (Taylor)", preference_taylor_point("dpo", best.order))):
        curve = loss(delta, ones, reduction="none") - loss(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
        ax.plot(s, curve.numpy(), label=label)
    ax.plot(s, (-torch.log(s) + torch.log(torch.tensor(0.5))).numpy(), "--", label="DPO (exact)")
    ax.set_xlabel("s = sigmoid(Delta) of the preferred side")
    ax.set_ylabel("loss (0 at s = 1/2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
