"""The PU task: the selector/discriminator Taylor family searched on Parquet embeddings.

It owns its options (:class:`PUSearchOptions`), reading (and so checking) the training and test
sets, the space, the plan every pack trains under, the elite re-evaluation after the budget, the
final report on the test split and the plot of the best loss.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from search.engine.options import SearchOptions
from trainers.config import (
    DEFAULT_VAL_METRIC, FITNESS_NEEDS_PRIOR, LABELLING_HELP, LABELLINGS, PU_FITNESS, SEARCH_DEFAULT_FITNESS,
    TRUTH_FITNESS, VAL_HELP, VAL_METRICS, VAL_SIZE_HELP, absolute_paths, check_validation_options, opt,
)
from trainers.errors import UsageError

Log = Callable[[str], None]


@dataclass
class PUSearchOptions:
    labelled_frac: float = opt(0.1, "benchmark data (truth 'label'): share of positives drawn as labelled")
    labelling: str = opt("scar", LABELLING_HELP, choices=LABELLINGS)
    val: str | None = opt(None, VAL_HELP + " (with one --train)")
    val_size: int = opt(0, VAL_SIZE_HELP + " (per --train)")
    val_metric: str = opt(DEFAULT_VAL_METRIC, "with a labelled validation set: each member's metric on it",
                          choices=VAL_METRICS)
    prior: float | None = opt(None, "class prior, for a fitness or control that needs one (benchmark data: the "
                              "truth; else with --val: its positive share)")
    fitness: str = opt(SEARCH_DEFAULT_FITNESS, "each member's validation metric without a labelled validation set "
                       "(PU information only)", choices=PU_FITNESS + TRUTH_FITNESS)
    folds: int = opt(2, "validation folds per candidate (labelled/validation partitions, re-drawn for every pack)")
    seeds_per_candidate: int = opt(1, "training seeds per candidate and fold")
    controls: list[str] | None = opt(None, "hand-made losses trained in every pack on the same folds and seeds; "
                                           "fitness is the paired margin over the best of them (none: raw fitness; "
                                           "default: pan,naive, and nnpu too with a labelled validation set)")
    exact_controls: bool | None = opt(None, "train the controls as the exact hand-made losses, so a searched loss "
                                            "wins only by beating them and a control that wins is exported as itself "
                                            "(no: as their Taylor points; default: exact with a labelled validation "
                                            "set, Taylor points with PU only)")
    rungs: list[int] = opt([1, 3], "successive halving: epochs at each rung before the last (the last is --epochs; "
                                   "rungs at or past it are dropped); none: every candidate trains every epoch")
    keep: float = opt(1 / 3, "share of candidates that train on after each rung")
    reevaluate: int = opt(6, "elites retrained after the search on fresh folds and seeds, beside the controls and "
                             "the seed losses (0: none)")
    reevaluation_folds: int = opt(4, "folds per elite in the re-evaluation (never seen by the search)")
    reevaluation_seeds: int = opt(1, "seeds per elite and fold in the re-evaluation")
    sample_rows: int | None = opt(None, "search on a seeded sample of this many rows of each --train, stratified "
                                        "(labelled and unlabelled rows keep their shares; written to the results "
                                        "folder); then train the found loss on everything with train-pu --workers")

    # What a search.json from before a field existed meant by its absence (read on resume).
    LEGACY = {"exact_controls": False}

    def __post_init__(self) -> None:
        absolute_paths(self, "val")  # the packs run inside their trial folders; a resume may start elsewhere

    def validate(self, epochs: int) -> None:
        if self.fitness not in PU_FITNESS + TRUTH_FITNESS:
            raise UsageError(f"unknown fitness {self.fitness!r}; choose from {PU_FITNESS} (PU-only) or {TRUTH_FITNESS}")
        if not 0.0 < self.labelled_frac <= 1.0:
            raise UsageError(f"--labelled-frac must be in (0, 1], got {self.labelled_frac}")
        check_validation_options(self.labelling, self.val, self.val_size, self.val_metric)
        if self.prior is not None and not 0.0 < self.prior < 1.0:
            raise UsageError(f"--prior must be in (0, 1), got {self.prior}")
        if self.folds < 1 or self.seeds_per_candidate < 1 or self.reevaluation_folds < 1 or self.reevaluation_seeds < 1:
            raise UsageError("--folds, --seeds-per-candidate, --reevaluation-folds and --reevaluation-seeds must be at least 1")
        if self.reevaluate < 0:
            raise UsageError(f"--reevaluate must be >= 0, got {self.reevaluate}")
        if not 0.0 < self.keep <= 1.0:
            raise UsageError(f"--keep must be in (0, 1], got {self.keep}")
        if self.sample_rows is not None and self.sample_rows < 10:
            raise UsageError(f"--sample-rows must be at least 10, got {self.sample_rows}")
        if any(r < 1 for r in self.rungs) or self.rungs != sorted(set(self.rungs)):
            raise UsageError(f"--rungs must be increasing epoch counts (at least 1), got {self.rungs}")

    def controls_exact(self) -> bool:
        """Whether the controls train exactly. With PU-only validation the fitness scores labelled
        against unlabelled rows, which is what the naive loss itself minimises: exact naive then
        wins every pairing (first run: every candidate -0.14 or worse, PAN -0.12), and the search
        could only ever export naive. Labelled rows score what the user wants instead."""
        return self.exact_controls if self.exact_controls is not None else self.has_labelled_rows()

    def has_labelled_rows(self) -> bool:
        """A hand-labelled validation set: --val, or benchmark mode's --val-size."""
        return bool(self.val or self.val_size)

    def control_names(self) -> list[str]:
        """--controls, else the default. With labelled rows the prior is known (the truth, or the
        rows' positive share) and the controls train exactly, so nnPU joins them: it was the best
        hand-made loss on 20News and CR, where a search choosing between PAN and naive exported a
        loss 1.0-2.7 F1 below it (RESULTS, "A third control"). PU-only searches keep pan,naive:
        there the prior may be unknown."""
        if self.controls is not None:
            return self.controls
        return ["pan", "naive", "nnpu"] if self.has_labelled_rows() else ["pan", "naive"]

    def labelling_fields(self) -> dict:
        """The PUConfig fields that say how a training set is labelled and validated: the search's
        packs, its re-evaluation and its final report all label and validate alike."""
        return {"labelled_frac": self.labelled_frac, "labelling": self.labelling, "val": self.val,
                "val_size": self.val_size, "val_metric": self.val_metric, "fitness": self.fitness}

    def rung_epochs(self, epochs: int) -> list[int]:
        """Epochs at each rung: the --rungs below --epochs, then --epochs itself (a short search
        simply has fewer rungs)."""
        return [r for r in self.rungs if r < epochs] + [epochs]


@dataclass
class PUInputs:
    """What reading the data told the driver (kept small: workers read the data themselves)."""

    priors: list[float | None]  # per training set, the class prior where known
    samples: list = field(default_factory=list)  # --sample-rows: per training set, the sample to write


# Members (candidates x folds x seeds) one PU pack may stack. On a CPU a pack's step costs about
# K single steps, so past ~100 members bigger packs stop saving anything but keep the optimiser
# waiting; a GPU takes far more members per step. Memory is not the limit at these sizes (a
# member of the default problem's selector/discriminator pair, with AdamW state, is ~3 MB).
AUTO_PACK_MEMBERS = {"cpu": 128, "gpu": 512}

# The shipped losses a search starts from besides PAN (order 2 only: the zoo's order), so that its
# re-evaluation weighs what earlier searches found against the controls and its own candidates. On
# the built-in problem (rare positives) it then exports v2 at 2 of 3 seeds (+3.0/+4.0 F1 over naive
# on the test split) where PAN alone led to naive; PU only on five sets no search saw, -1.6 -> +0.8
# F1 against the best hand-made loss (benchmarks/RESULTS.md, "The first run" and "The default search").
SHIPPED_SEED_LOSSES = {2: ["zoo:pu-taylor-v2", "zoo:pu-taylor-v3"]}


class PUTask:
    """A :class:`search.tasks.Task`."""

    name, options_class = "pu", PUSearchOptions
    default_epochs = 10

    def default_seed_losses(self, order: int) -> list[str]:
        return ["pan"] + SHIPPED_SEED_LOSSES.get(order, [])

    def space(self, order: int):
        from search.engine.space import TaylorSpace

        return TaylorSpace(order=order)

    def validate(self, opts: SearchOptions) -> None:
        o: PUSearchOptions = opts.task_options
        o.validate(opts.epochs)
        from trainers.losses.seeds import SEED_FUNCTIONS

        for name in o.control_names():
            if name not in SEED_FUNCTIONS:
                raise UsageError(f"--controls: no hand-made loss {name!r}; choose from {sorted(SEED_FUNCTIONS)}")
        if o.val is not None and len(opts.train) != 1:
            raise UsageError("--val is a labelled validation set for one --train; with several, use --val-size")
        if len(opts.train) > 1 and o.folds * o.seeds_per_candidate < 2:
            raise UsageError("a multi-data-set search puts margins in noise units: it needs --folds x --seeds-per-candidate >= 2")

    def smoke(self, opts: SearchOptions) -> SearchOptions:
        small = replace(opts.task_options, rungs=[1], reevaluate=2, reevaluation_folds=2, reevaluation_seeds=1)
        return replace(opts, epochs=2, task_options=small)

    def read_inputs(self, opts: SearchOptions) -> PUInputs:
        """Read every training set (or its sample) and test set now: a bad file fails before
        anything is written."""
        from trainers.data.pu import PUData
        from trainers.data.shards import read_table
        from trainers.losses.seeds import NEEDS_PRIOR

        o: PUSearchOptions = opts.task_options
        priors, samples = [], []
        if not opts.train:  # the built-in problem: its prior by the rule every --train follows
            from trainers.data.synthetic import synthetic_pu_problem

            data = PUData.from_table(synthetic_pu_problem()[0], o.labelled_frac, opts.seed, o.labelling, o.val_size)
            priors.append(o.prior if o.prior is not None else data.known_prior)
        for i, source in enumerate(opts.train):
            table = _training_table(opts, i)
            samples.append(table if o.sample_rows is not None else None)
            val = read_table(o.val, need="label") if o.val else None
            data = PUData.from_table(table, o.labelled_frac, opts.seed, o.labelling, o.val_size, val)
            if opts.test:
                test = read_table(opts.test[i], need="label")
                if test.dim != data.dim:
                    raise UsageError(f"{opts.test[i]}: test embeddings have dimension {test.dim}, {source} has {data.dim}")
            priors.append(o.prior if o.prior is not None else data.known_prior)
        if o.fitness in FITNESS_NEEDS_PRIOR and any(p is None for p in priors):
            raise UsageError(f"fitness {o.fitness} needs the class prior: pass --prior, or --val to estimate it from")
        with_prior = sorted(set(NEEDS_PRIOR) & set(o.control_names()))
        if o.controls_exact() and with_prior and None in priors:
            raise UsageError(f"--controls {','.join(with_prior)} trained exactly need the class prior: pass --prior "
                             "or --val to estimate it from (or --no-exact-controls for their Taylor points)")
        return PUInputs(priors, samples)

    def seed_vectors(self, opts: SearchOptions, inputs: PUInputs) -> list:
        """(name, vector) of each --seed-losses: PAN's centre sits at the (mean known) prior."""
        space = self.space(opts.order)
        return [(n, space.seed_point(n, prior=_seed_prior(inputs))) for n in opts.seed_losses]

    def pack_cap(self, opts: SearchOptions) -> int:
        o: PUSearchOptions = opts.task_options
        members = AUTO_PACK_MEMBERS["gpu" if opts.gpus_per_worker > 0 else "cpu"]
        return max(1, members // (o.folds * o.seeds_per_candidate))

    def plan(self, opts: SearchOptions, inputs: PUInputs):
        from trainers.config import PUConfig
        from trainers.pu_pack import PUPackPlan

        o: PUSearchOptions = opts.task_options
        space = self.space(opts.order)
        controls = [{"name": n, **space.candidate(space.seed_point(n, prior=_seed_prior(inputs))),
                     **({"exact": n} if o.controls_exact() else {})} for n in o.control_names()]
        for path, sample in zip(training_sources(opts), inputs.samples):
            if sample is not None and not Path(path).exists():
                from trainers.data.shards import table_to_arrow
                from trainers.data.storage import write_parquet

                write_parquet(table_to_arrow(sample), path)
        return PUPackPlan(
            datasets=training_sources(opts),
            labelled_frac=o.labelled_frac,
            seed=opts.seed,
            pu=PUConfig(epochs=opts.epochs, seed=opts.seed, **o.labelling_fields()),
            priors=inputs.priors,  # only a fitness or an exact control that needs the prior reads it
            folds=o.folds,
            seeds_per_candidate=o.seeds_per_candidate,
            controls=controls,
            rungs=o.rung_epochs(opts.epochs),
            keep=o.keep,
        )

    def worker_loop(self):
        from trainers.loop import pu_pack_worker_loop

        return pu_pack_worker_loop

    def before_search(self, opts: SearchOptions, log: Log) -> None:
        """Nothing: every pack reads its shards itself."""

    def after_search(self, folder: Path, opts: SearchOptions, plan, searcher, log: Log) -> None:
        from search.engine.reevaluation import reevaluate_elites

        if opts.task_options.reevaluate > 0:
            reevaluate_elites(folder, opts, plan, searcher, self.space(opts.order), self.worker_loop(), log)

    def final_report(self, folder: Path, opts: SearchOptions, log: Log) -> dict:
        return final_pu_report(folder, opts, log)

    def plot_best(self, best, path: Path) -> None:
        plot_taylor_slices(best, path)


def sample_path(opts: SearchOptions, i: int) -> Path:
    return opts.folder() / f"sample-{i}.parquet"


def training_sources(opts: SearchOptions) -> list[str | None]:
    """What a PU search's packs (and its final report) train on: each --train, or with
    --sample-rows its sample in the results folder; the built-in problem without --train."""
    if not opts.train:
        return [None]
    if opts.task_options.sample_rows is None:
        return list(opts.train)
    return [str(sample_path(opts, i)) for i in range(len(opts.train))]


def _training_table(opts: SearchOptions, i: int):
    """--train number ``i`` (read whole), or its stratified sample -- drawn once, then read back
    from the results folder (resume)."""
    from trainers.data.pu import stratified_sample
    from trainers.data.shards import read_table

    n = opts.task_options.sample_rows
    if n is None:
        return read_table(opts.train[i])
    if sample_path(opts, i).exists():
        return read_table(sample_path(opts, i))
    return stratified_sample(opts.train[i], n, opts.seed)


def _seed_prior(inputs: PUInputs) -> float:
    known = [p for p in inputs.priors if p is not None]
    return sum(known) / len(known) if known else 0.5


FINAL_SEEDS = 3  # training seeds per loss on the test split: one run's F1 is too noisy to compare losses


def final_pu_report(folder: Path, opts, log=print) -> dict:
    """Per data set: the exported loss and every control trained with the search's epochs and
    labelling on ``FINAL_SEEDS`` seeds, scored once on the test split; a line says what the
    search bought over the best control (test labels choose nothing: the loss was exported
    before this runs)."""
    from search.engine.reevaluation import exported_loss_note
    from trainers.config import PUConfig
    from trainers.pu import load_tables, train_pu

    o = opts.task_options
    pairs = list(zip(training_sources(opts), opts.test)) if opts.train else [(None, None)]
    note = exported_loss_note(folder)
    if opts.train and not opts.test:
        log("no --test given: the best loss is not scored on held-out data")
        if note:
            log(note)
        return {}
    losses = {"best": str(folder / "best_loss.json"), **{c: c for c in dict.fromkeys(["pan", *o.control_names()])}}
    report = {"datasets": [], "seeds": [opts.seed + i for i in range(FINAL_SEEDS)]}
    for train_path, test_path in pairs:
        train, test = load_tables(train_path, test_path)
        entry = {"train": train_path or "<built-in>", "test": test_path or "<built-in>"}
        for label, loss in losses.items():
            with one_thread():
                runs = [train_pu(PUConfig(loss=loss, seed=seed, epochs=opts.epochs, prior=o.prior, **o.labelling_fields()),
                                 train, test) for seed in report["seeds"]]
            entry[label] = _mean_of_runs(runs)
            entry["validation"] = runs[0]["validation"]
        report["datasets"].append(entry)
        log(_test_line(entry, list(losses)[1:]))
    if note:
        log(note)
    return report


@contextmanager
def one_thread():
    """Train on one thread here: a small PU model trains as fast on one as on two (15.9 s vs 16.6 s
    for this report on 2 quiet CPUs), and beside a busy process the second thread's spinning made
    it 3x slower (47.9 s vs 17.1 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mean_of_runs(runs: list[dict]) -> dict:
    """Test metrics of one loss over seeds: means (a diverged run scores F1 0), per-seed F1."""
    import numpy as np

    f1 = [r.get("test_f1") or 0.0 for r in runs]
    auc = [r.get("test_auc") for r in runs if r.get("test_auc") is not None]
    return {"test_f1": float(np.mean(f1)), "test_f1_sd": float(np.std(f1)), "test_f1_per_seed": f1,
            "test_auc": float(np.mean(auc)) if auc else None, "status": [r.get("status") for r in runs]}


def _test_line(entry: dict, references: list[str]) -> str:
    best_ref = max(references, key=lambda name: entry[name]["test_f1"])
    gain = 100 * (entry["best"]["test_f1"] - entry[best_ref]["test_f1"])
    scores = "  ".join(f"{name} {100 * entry[name]['test_f1']:.1f}" for name in ["best", *references])
    return (f"test split {entry['test']} (F1, mean of {FINAL_SEEDS} seeds, scored once after the search): {scores}; "
            f"the exported loss {'beats' if gain > 0 else 'trails' if gain < 0 else 'ties'} the best reference "
            f"({best_ref}) by {abs(gain):.1f} F1")


def plot_taylor_slices(best, path: Path) -> None:
    """One panel per variable: each player's loss along its own variables, the others at 0.5.

    PAN is drawn exactly (shifted to 0 at the slice's centre) and as its Taylor point of the
    same order, since the family holds only the latter.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from trainers.losses.pu import pan_probability_losses
    from trainers.losses.seeds import taylor_point
    from trainers.losses.taylor import VARIABLES

    pan_taylor = taylor_point("pan", best.order)
    grid = torch.linspace(0.02, 0.98, 97, dtype=torch.float64)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for i, (ax, var) in enumerate(zip(axes, VARIABLES)):
        player = 0 if i < 2 else 1
        values = [torch.full_like(grid, 0.5) for _ in range(4)]
        values[i] = grid
        base = [torch.full((1,), 0.5, dtype=torch.float64)] * 4
        for label, loss in (("best", best), ("PAN (Taylor)", pan_taylor)):
            curve = [loss(*(v[j : j + 1] for v in values))[player].item() for j in range(len(grid))]
            ax.plot(grid, curve, label=label)
        exact = pan_probability_losses(*values)[player] - pan_probability_losses(*base)[player]
        ax.plot(grid, exact.numpy(), "--", label="PAN (exact)")
        ax.set_xlabel(var)
        ax.set_title(("L_D" if player == 0 else "L_C") + f" along {var}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


