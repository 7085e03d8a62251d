"""What a resume may change in a search, checked before Ray starts.

A search's evaluations only add up when every one of them was made under the same options: the
task, the loss family's order (so the optimiser's dimensions), the data, the fitness, epochs,
folds, seeds, controls, halving. ``search.json`` is a plain file anyone can edit, so the options
that fix those are also written, once, into the evaluation log's first line (``{"event":
"start", "fixed": {...}, "budget": N}``) and compared on every resume: a changed one is refused
as one line naming the field. What may change: where the folder lies (``name``, ``storage``: it
is wherever the command line says), the budget (up only), and resources (concurrency, workers,
CPUs, GPUs, retries).
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path

from search.engine.evaluations import EvaluationLog
from search.engine.options import SearchOptions
from trainers.errors import DataError

MAY_CHANGE = ("name", "storage", "budget", "concurrency", "workers_per_trial", "cpus_per_worker", "gpus_per_worker",
              "max_failures")


def fixed_fields(opts: SearchOptions) -> dict:
    """The options a resume must keep, flat (a task's own options by their own names)."""
    d = opts.to_dict()
    task_options = d.pop("task_options") or {}
    return {**{k: v for k, v in d.items() if k not in MAY_CHANGE}, **task_options}


def options_from_spec(spec: dict, spec_path: Path, options_class_for) -> SearchOptions:
    """SearchOptions of a ``search.json``, its task options built by ``options_class_for(task)``;
    a mangled one (an unknown task option, a value of the wrong type) is one line naming the
    file and the field."""
    try:
        opts = SearchOptions.from_dict(spec)
        options_class = options_class_for(opts.task)
        opts.task_options = options_class(**{**getattr(options_class, "LEGACY", {}), **(opts.task_options or {})})
    except (TypeError, ValueError, AttributeError) as err:
        raise DataError(spec_path, f"not a valid search spec: {err}") from None
    for owner in (opts, opts.task_options):
        for f in fields(owner) if is_dataclass(owner) else ():
            value = getattr(owner, f.name)
            if f.name != "task_options" and not _fits(value, str(f.type)):
                raise DataError(spec_path, f"{value!r} is not of type {str(f.type).replace(' | None', '')}", f.name,
                                kind="field")
    return opts


def _fits(value, annotation: str) -> bool:
    """Whether a JSON value fits a field's annotation ("int", "float | None", "list[str]", ...)."""
    if value is None:
        return "None" in annotation
    kind = annotation.replace(" | None", "")
    if kind.startswith("list["):
        return isinstance(value, list) and all(_fits(v, kind[5:-1]) for v in value)
    types = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}.get(kind)
    if types is None:
        return True
    return isinstance(value, types) and (kind == "bool" or not isinstance(value, bool))


def record_start(log: EvaluationLog, opts: SearchOptions) -> None:
    """A new search's first log line: what every later resume is checked against."""
    log.append(event="start", fixed=fixed_fields(opts), budget=opts.budget)


def check_resume(opts: SearchOptions, log: EvaluationLog, spec_path: Path, dimension) -> None:
    """Refuse a resume whose ``search.json`` no longer matches the search in the log: a fixed
    option changed, the budget below what the search was started with or already asked, or
    (a log from before the start record) vectors of another dimension than the order gives:
    ``dimension()`` is called only once the fixed fields are known to be the search's."""
    events = log.events()
    start = next((e for e in events if e["event"] == "start"), None)
    now = fixed_fields(opts)
    if start is not None:
        for name, value in start["fixed"].items():
            if now.get(name) != value:
                raise DataError(spec_path, f"is {now.get(name)!r} but the search was started with {value!r}; a resume "
                                           "may change only the budget (up) and resources: start a new search",
                                name, kind="field")
    asked = {e["id"] for e in events if e["event"] == "ask"}
    floor = max(len(asked), start["budget"] if start else 0)
    if opts.budget < floor:
        raise DataError(spec_path, f"{opts.budget} is below what the search already holds ({floor}); "
                                   "the budget may only grow", "budget", kind="field")
    check_dimension(events, opts.order, spec_path, dimension())


def check_dimension(events: list[dict], order: int, spec_path: Path, dimension: int) -> None:
    """A log from before the start record: its vectors must have the dimensions the order gives."""
    sizes = {len(e["vector"]) for e in events if e["event"] == "ask"}
    if sizes - {dimension}:
        raise DataError(spec_path, f"order {order} gives {dimension} dimensions but the log holds vectors of "
                                   f"{sorted(sizes)[0]}: the order cannot change on resume", "order", kind="field")


def resumed_runs(folder: Path) -> list[Path]:
    """The Train runs whose checkpoints a resume loads: the packs still owed a tell, and the
    re-evaluation (a finished pack's checkpoints are never read again)."""
    from search.engine.trial import train_run_name

    events = EvaluationLog(folder).events()
    told = {e["id"] for e in events if e["event"] == "tell"}
    pending = sorted({e["pack"] for e in events if e["event"] == "ask" and e["id"] not in told})
    return [folder / "train" / train_run_name(p) for p in pending] + sorted((folder / "train").glob("reevaluation*"))
