"""The task interface: everything that differs between one kind of search and another.

A :class:`Task` owns its options dataclass, defaults and validation, reading (and so checking)
its data, the loss family's space, the pack-size cap, the plan every pack trains under and the
worker loop that runs it, what the driver prepares for every pack (pair mode: the state cache),
what happens after the budget (PU: re-evaluating the elites), the final report on the test split
and the plot of the best loss. Each task lives in its own module
(``pu.py``, ``preference.py``); :data:`TASKS` below is the one registry. A new task is one new
module and a line in :data:`TASKS`.

The command line resolves ``--task`` here, once, and passes the task object down; the generic
modules (``search.engine.driver``, ``search.engine.trial``, ``search.engine.report``, ``search.engine.reevaluation``) take it
as an argument and never import a task.

    driver (run_search) --TrialSetup--> trial (search.engine.trial) --PackJob--> worker loop
          ^                                                                 |
          +--------------- searcher <-- PackReport (via Tune) --------------+
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Protocol

from search.engine.options import SearchOptions
from search.tasks.preference import PreferenceTask
from search.tasks.pu import PUTask
from trainers.errors import UsageError

Log = Callable[[str], None]


class Task(Protocol):
    name: str
    options_class: type  # the task's own options dataclass (SearchOptions.task_options)
    default_epochs: int

    def default_seed_losses(self, order: int) -> list[str]: ...  # --seed-losses when not given

    def space(self, order: int): ...  # a search.engine.space.LossSpace

    def validate(self, opts: SearchOptions) -> None: ...  # task checks (common ones: validate_common)

    def smoke(self, opts: SearchOptions) -> SearchOptions: ...  # --smoke-test: a run of about a minute

    def read_inputs(self, opts: SearchOptions): ...  # read (so check) the data; what plan() needs

    def seed_vectors(self, opts: SearchOptions, inputs) -> list: ...  # (name, vector) of --seed-losses

    def pack_cap(self, opts: SearchOptions) -> int: ...  # most candidates one pack may hold

    def plan(self, opts: SearchOptions, inputs): ...  # the dataclass every pack trains under

    def worker_loop(self): ...  # the Ray Train loop that trains a PackJob

    def before_search(self, opts: SearchOptions, log: Log) -> None: ...  # driver-side work the packs share

    def after_search(self, folder: Path, opts: SearchOptions, plan, searcher, log: Log) -> None: ...

    def final_report(self, folder: Path, opts: SearchOptions, log: Log) -> dict: ...  # {} without --test

    def plot_best(self, best, path: Path) -> None: ...


TASKS: dict[str, Task] = {task.name: task for task in (PUTask(), PreferenceTask())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UsageError(f"--task must be one of {tuple(TASKS)}, got {name!r}")
    return TASKS[name]


def task_options_classes() -> dict[str, type]:
    """--task name -> its options dataclass (the command line's flags come from these)."""
    return {name: task.options_class for name, task in TASKS.items()}


def load_search(folder: str | Path) -> tuple[Task, SearchOptions]:
    """The task and options a search in ``folder`` was started with (its search.json)."""
    from search.session.ray_session import RunFolder
    from search.engine.report import SPEC_FILE

    if not (Path(folder) / SPEC_FILE).is_file():
        raise UsageError(f"{folder} is not a lossforge search (no {SPEC_FILE})")
    from search.engine.resume import options_from_spec

    run = RunFolder(Path(folder), SPEC_FILE, "")
    opts = options_from_spec(run.load_spec(), run.spec_path, lambda name: get_task(name).options_class)
    # search.json holds no storage path: the folder is where it lies now (moved or copied searches resume in place)
    folder = Path(folder)
    return get_task(opts.task), replace(opts, name=folder.name, storage=str(folder.parent))
