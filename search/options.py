"""A search's options as dataclasses, and the command line derived from them.

``SearchOptions`` holds what every search has; what one task needs lives in that task's own
options dataclass (``PUSearchOptions``, ``PreferenceSearchOptions``), nested as
``task_options``. Every field carries its ``--help`` (``trainers.config.opt``), and
:func:`add_dataclass_options` turns fields into flags, so an option is written down once.
Nothing here imports torch, Ray or Nevergrad: building the parser must stay instant.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from trainers.config import (
    DEFAULT_VAL_METRIC, LABELLING_HELP, LABELLINGS, PU_FITNESS, SEARCH_DEFAULT_FITNESS, TRUTH_FITNESS, VAL_HELP,
    VAL_METRICS, VAL_SIZE_HELP, check_validation_options, opt,
)
from trainers.errors import UsageError

DEFAULT_STORAGE = "lossforge_results"


@dataclass
class PUSearchOptions:
    labelled_frac: float = opt(0.1, "benchmark data (truth 'label'): share of positives drawn as labelled")
    labelling: str = opt("scar", LABELLING_HELP, choices=LABELLINGS)
    val: str | None = opt(None, VAL_HELP + " (with one --train)")
    val_size: int = opt(0, VAL_SIZE_HELP + " (per --train)")
    val_metric: str = opt(DEFAULT_VAL_METRIC, "with a labelled validation set: each member's metric on it",
                          choices=VAL_METRICS)
    prior: float | None = opt(None, "class prior, for a fitness that needs one (benchmark data: the truth)")
    fitness: str = opt(SEARCH_DEFAULT_FITNESS, "each member's validation metric without a labelled validation set "
                       "(PU information only)", choices=PU_FITNESS + TRUTH_FITNESS)
    folds: int = opt(2, "validation folds per candidate (labelled/validation partitions, re-drawn for every pack)")
    seeds_per_candidate: int = opt(1, "training seeds per candidate and fold")
    controls: list[str] = opt(["pan", "naive"], "hand-made losses trained in every pack on the same folds and seeds; "
                                                "fitness is the paired margin over the best of them (none: raw fitness)")
    rungs: list[int] = opt([1, 3], "successive halving: epochs at each rung before the last (the last is --epochs; "
                                   "rungs at or past it are dropped); none: every candidate trains every epoch")
    keep: float = opt(1 / 3, "share of candidates that train on after each rung")
    reevaluate: int = opt(8, "elites retrained after the search on fresh folds and seeds (0: none)")
    reevaluation_folds: int = opt(4, "folds per elite in the re-evaluation (never seen by the search)")
    reevaluation_seeds: int = opt(1, "seeds per elite and fold in the re-evaluation")
    sample_rows: int | None = opt(None, "search on a seeded sample of this many rows of each --train, stratified "
                                        "(labelled and unlabelled rows keep their shares; written to the results "
                                        "folder); then train the found loss on everything with train-pu --workers")

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
class PreferenceSearchOptions:
    mode: str = opt("encoder", "the model kind", choices=("encoder", "causal"))
    model: str | None = opt(None, "local Hugging Face model folder (default: the built-in tiny model)")
    max_pairs: int | None = opt(None, "train on a seeded sample of this many pairs")
    fitness: str = opt("val_agreement", "validation agreement with the labels", choices=("val_agreement",))

    def validate(self, epochs: int) -> None:
        if self.fitness != "val_agreement":
            raise UsageError(f"unknown fitness {self.fitness!r} for --task dpo; choose from ('val_agreement',)")
        if self.max_pairs is not None and self.max_pairs < 2:
            raise UsageError(f"--max-pairs must be at least 2, got {self.max_pairs}")


TASK_OPTIONS = {"pu": PUSearchOptions, "dpo": PreferenceSearchOptions}


@dataclass
class SearchOptions:
    name: str | None = opt(None, "results folder name under --storage (default: search-<date>-<time>)")
    task: str = opt("pu", "pu: the selector/discriminator Taylor family (Parquet embeddings); "
                          "dpo: pairwise preference losses (pairs)", choices=tuple(TASK_OPTIONS))
    storage: str = opt(DEFAULT_STORAGE, "where results folders live")
    train: list[str] = opt([], "training data; pu: repeat for a multi-data-set search (default: the built-in task)",
                           repeat=True)
    test: list[str] = opt([], "held-out data with the truth, one per --train, scored once for the final report",
                          repeat=True)
    budget: int = opt(32, "candidates to evaluate")
    # NGOpt: the default by benchmarks/search_efficiency.py (README, "Which optimiser").
    optimizer: str = opt("NGOpt", "any name in Nevergrad's optimizer registry")
    order: int = opt(2, "Taylor order: 1-4 (pu), 1-6 (dpo)")
    pack: int | None = opt(None, "candidates trained together in one trial (default auto: the budget over one "
                                 "round of concurrent trials, within a per-task cap)", auto=True)
    concurrency: int | None = opt(None, "trials at once (default: from cluster resources)")
    workers_per_trial: int = opt(1, "data-parallel Ray Train workers per trial")
    cpus_per_worker: float = opt(1.0, "CPUs per Train worker")
    gpus_per_worker: float = opt(0.0, "GPUs per Train worker (fractional allowed)")
    epochs: int | None = opt(None, "per candidate (default: 10 for pu, 3 for dpo)")
    seed_losses: list[str] | None = opt(None, "hand-made losses evaluated first: pan,naive,upu,nnpu (pu; default pan), "
                                              "dpo,sigmoid,brier (dpo; default dpo)")
    seed: int = opt(0, "labelling, folds, optimiser and training seeds")
    max_failures: int = opt(2, "Train restarts per pack after a node loss")
    task_options: object = opt(None, cli=False)

    def __post_init__(self):
        options_class = TASK_OPTIONS.get(self.task)
        if isinstance(self.task_options, dict) and options_class is not None:
            self.task_options = options_class(**self.task_options)
        elif self.task_options is None and options_class is not None:
            self.task_options = options_class()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def validate_common(self) -> None:
        if self.task not in TASK_OPTIONS:
            raise UsageError(f"--task must be one of {tuple(TASK_OPTIONS)}, got {self.task!r}")
        if self.budget < 1 or (self.pack is not None and self.pack < 1) or (self.epochs is not None and self.epochs < 1):
            raise UsageError("--budget, --pack and --epochs must be at least 1")
        if self.workers_per_trial < 1 or self.cpus_per_worker < 0 or self.gpus_per_worker < 0 or self.max_failures < 0:
            raise UsageError("--workers-per-trial must be >= 1 and --cpus/--gpus-per-worker, --max-failures >= 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        check_name(self.name)
        if self.test and len(self.test) != len(self.train):
            raise UsageError(f"give one --test per --train ({len(self.train)} --train, {len(self.test)} --test)")

    def folder(self) -> Path:
        return Path(self.storage).expanduser().resolve() / self.name


def check_name(name: str | None) -> None:
    """A search's name is one plain folder under --storage: no paths, no traversal."""
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
        raise UsageError(f"--name must be a plain folder name (letters, digits, . _ -), got {name!r}")


# -- the command line, derived from the dataclasses ----------------------------------------------

_SCALARS = {"int": int, "float": float, "str": str}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_list(kind):
    def parse(text: str):
        items = [t for t in text.split(",") if t and t != "none"]
        try:
            return [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None

    return parse


def _auto_or_int(text: str):
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def add_dataclass_options(parser, cls, defaults=None, skip=(), suppress: bool = False, free=()) -> None:
    """One flag per field of ``cls`` whose metadata does not say ``cli=False``.

    ``defaults``: an instance whose values become the flags' defaults; ``suppress``: leave a flag
    out of the parsed namespace unless given (a task's options, validated against ``--task``);
    ``free``: fields whose ``choices`` are left to ``validate()`` (a flag several tasks share)."""
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("cli", True) or f.name in skip:
            continue
        default = getattr(defaults, f.name) if defaults is not None else (
            f.default if f.default is not MISSING else f.default_factory())
        kwargs = {"help": meta.get("help", ""), "dest": f.name}
        kwargs["default"] = argparse.SUPPRESS if suppress else default
        kind = str(f.type).replace(" | None", "")
        if meta.get("auto"):
            kwargs["type"] = _auto_or_int
        elif kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif meta.get("repeat"):
            kwargs.update(action="append", default=argparse.SUPPRESS if suppress else None)
        elif kind.startswith("list["):
            kwargs["type"] = _parse_list(_SCALARS[kind[5:-1]])
        else:
            kwargs["type"] = _SCALARS[kind]
        if "choices" in meta and f.name not in free:
            kwargs["choices"] = meta["choices"]
        parser.add_argument(_flag(f.name), **kwargs)


def add_search_options(parser, defaults: SearchOptions | None = None) -> None:
    """The common options, then each task's (a flag two tasks share, like --fitness, once)."""
    add_dataclass_options(parser, SearchOptions, defaults)
    seen: set[str] = set()
    counts: dict[str, int] = {}
    for options_class in TASK_OPTIONS.values():
        for f in fields(options_class):
            counts[f.name] = counts.get(f.name, 0) + 1
    shared = {name for name, n in counts.items() if n > 1}
    for task, options_class in TASK_OPTIONS.items():
        group = parser.add_argument_group(f"--task {task} options")
        add_dataclass_options(group, options_class, suppress=True, skip=seen, free=shared)
        seen |= {f.name for f in fields(options_class)}


def options_from_args(args) -> SearchOptions:
    """The parsed flags as SearchOptions; a flag of another task than ``--task`` is refused."""
    values = vars(args)
    common = {f.name: values[f.name] for f in fields(SearchOptions) if f.name in values}
    common["train"], common["test"] = common.get("train") or [], common.get("test") or []
    given = {k: v for k, v in values.items() if k not in common}
    task_class = TASK_OPTIONS.get(common.get("task"))
    own = {f.name for f in fields(task_class)} if task_class else set()
    for other, options_class in TASK_OPTIONS.items():
        stray = sorted({f.name for f in fields(options_class)} & given.keys() - own)
        if stray and other != common.get("task"):
            raise UsageError(f"{_flag(stray[0])} is an option of --task {other}, not --task {common.get('task')}")
    task_options = task_class(**{k: v for k, v in given.items() if k in own}) if task_class else None
    return SearchOptions(**common, task_options=task_options)


def search_argv(opts: SearchOptions) -> list[str]:
    """SearchOptions back to ``lossforge search`` flags (what differs from the defaults)."""
    argv: list[str] = []
    defaults = SearchOptions(task=opts.task)
    for owner, default_owner in ((opts, defaults), (opts.task_options, defaults.task_options)):
        for f in fields(owner):
            if not f.metadata.get("cli", True):
                continue
            value = getattr(owner, f.name)
            if value == getattr(default_owner, f.name) and f.name != "storage":
                continue
            if f.metadata.get("repeat"):
                for item in value:
                    argv += [_flag(f.name), str(item)]
            elif isinstance(value, list):
                argv += [_flag(f.name), ",".join(map(str, value)) or "none"]
            else:
                argv += [_flag(f.name), str(value)]
    return argv
