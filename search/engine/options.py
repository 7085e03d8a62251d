"""A search's options as dataclasses, and the command line derived from them.

``SearchOptions`` holds what every search has; what one task needs lives in that task's own
options dataclass (``search.tasks.pu.PUSearchOptions``, ``search.tasks.preference.
PreferenceSearchOptions``), nested as ``task_options``; the functions here take the tasks'
classes as an argument (``search.tasks.task_options_classes()``) rather than knowing them. Every field carries its ``--help`` (``trainers.config.opt``), and
:func:`add_dataclass_options` turns fields into flags, so an option is written down once.
Nothing here imports torch, Ray or Nevergrad: building the parser must stay instant.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

from trainers.config import opt
from trainers.errors import UsageError

DEFAULT_STORAGE = "lossforge_results"
@dataclass
class SearchOptions:
    name: str | None = opt(None, "results folder name under --storage (default: search-<date>-<time>)")
    task: str = opt("pu", "pu: the selector/discriminator Taylor family (Parquet embeddings); "
                          "dpo: pairwise preference losses (pairs)")
    storage: str = opt(DEFAULT_STORAGE, "where results folders live")
    train: list[str] = opt([], "training data; pu: repeat for a multi-data-set search (default: the built-in task)",
                           repeat=True)
    test: list[str] = opt([], "held-out data with the truth, one per --train, scored once for the final report",
                          repeat=True)
    budget: int = opt(32, "candidates to evaluate")
    # NGOpt: the default by benchmarks/search_efficiency.py (benchmarks/RESULTS.md, "Which optimiser").
    optimizer: str = opt("NGOpt", "any name in Nevergrad's optimizer registry")
    order: int = opt(2, "Taylor order: 1-4 (pu), 1-6 (dpo)")
    pack: int | None = opt(None, "candidates trained together in one trial (default auto: the budget over one "
                                 "round of concurrent trials, within a per-task cap)", auto=True)
    concurrency: int | None = opt(None, "trials at once (default: from cluster resources)")
    workers_per_trial: int = opt(1, "data-parallel Ray Train workers per trial")
    cpus_per_worker: float = opt(1.0, "CPUs per Train worker")
    gpus_per_worker: float = opt(0.0, "GPUs per Train worker (fractional allowed)")
    epochs: int | None = opt(None, "per candidate (default: 10 for pu, 3 for dpo)")
    seed_losses: list[str] | None = opt(None, "losses evaluated first: pan,naive,upu,nnpu or zoo:NAME (pu; default pan and, at order 2, "
                                              "zoo:pu-taylor-v2,zoo:pu-taylor-v3), "
                                              "dpo,sigmoid,brier (dpo; default dpo)")
    seed: int = opt(0, "labelling, folds, optimiser and training seeds")
    max_failures: int = opt(2, "Train restarts per pack after a node loss")
    task_options: object = opt(None, cli=False)  # the task's options dataclass (None: its defaults)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})  # task_options stays a dict: the task reads it

    def validate_common(self) -> None:
        if self.budget < 1 or (self.pack is not None and self.pack < 1) or (self.epochs is not None and self.epochs < 1):
            raise UsageError("--budget, --pack and --epochs must be at least 1")
        if self.workers_per_trial < 1 or self.cpus_per_worker < 0 or self.gpus_per_worker < 0 or self.max_failures < 0:
            raise UsageError("--workers-per-trial must be >= 1 and --cpus/--gpus-per-worker, --max-failures >= 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        check_name(self.name)
        from trainers.data.storage import is_remote

        if is_remote(self.storage):  # the evaluation log is appended to in place: an object store cannot
            raise UsageError(f"--storage {self.storage}: results folders must be on a local (or shared) file system, not a URI")
        if self.test and len(self.test) != len(self.train):
            raise UsageError(f"give one --test per --train ({len(self.train)} --train, {len(self.test)} --test)")

    def folder(self) -> Path:
        return Path(self.storage).expanduser().resolve() / self.name


def with_task_defaults(task, opts: SearchOptions) -> SearchOptions:
    """``opts`` with ``task``'s defaults where the caller left None (epochs, seed losses, options)."""
    return replace(opts, epochs=opts.epochs if opts.epochs is not None else task.default_epochs,
                   seed_losses=list(opts.seed_losses) if opts.seed_losses is not None else task.default_seed_losses(opts.order),
                   task_options=opts.task_options if opts.task_options is not None else task.options_class())


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


def add_search_options(parser, task_options: dict[str, type], defaults: SearchOptions | None = None) -> None:
    """The common options, then each task's (a flag two tasks share, like --fitness, once).
    ``task_options``: --task name -> its options dataclass."""
    add_dataclass_options(parser, SearchOptions, defaults)
    seen: set[str] = set()
    counts: dict[str, int] = {}
    for options_class in task_options.values():
        for f in fields(options_class):
            counts[f.name] = counts.get(f.name, 0) + 1
    shared = {name for name, n in counts.items() if n > 1}
    for task, options_class in task_options.items():
        group = parser.add_argument_group(f"--task {task} options")
        add_dataclass_options(group, options_class, suppress=True, skip=seen, free=shared)
        seen |= {f.name for f in fields(options_class)}


def options_from_args(args, task_options: dict[str, type]) -> SearchOptions:
    """The parsed flags as SearchOptions; a flag of another task than ``--task`` is refused.
    ``task_options``: --task name -> its options dataclass."""
    values = vars(args)
    common = {f.name: values[f.name] for f in fields(SearchOptions) if f.name in values}
    common["train"], common["test"] = common.get("train") or [], common.get("test") or []
    given = {k: v for k, v in values.items() if k not in common}
    task_class = task_options.get(common.get("task"))
    own = {f.name for f in fields(task_class)} if task_class else set()
    for other, options_class in task_options.items():
        stray = sorted({f.name for f in fields(options_class)} & given.keys() - own)
        if stray and other != common.get("task"):
            raise UsageError(f"{_flag(stray[0])} is an option of --task {other}, not --task {common.get('task')}")
    task_options = task_class(**{k: v for k, v in given.items() if k in own}) if task_class else None
    return SearchOptions(**common, task_options=task_options)


def search_argv(opts: SearchOptions) -> list[str]:
    """SearchOptions back to ``lossforge search`` flags (what differs from the defaults)."""
    argv: list[str] = []
    defaults = SearchOptions(task=opts.task)
    for owner, default_owner in ((opts, defaults), (opts.task_options, type(opts.task_options)())):
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
            elif isinstance(value, bool):  # a switch: --x or --no-x, no value
                argv.append(_flag(f.name) if value else "--no-" + _flag(f.name)[2:])
            else:
                argv += [_flag(f.name), str(value)]
    return argv
