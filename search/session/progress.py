"""Live progress: each pack's rung (PU) or candidate (DPO) as its workers report, through Tune
(:class:`PackProgress`) or, for a Train job run without Tune (train-dpo, a re-evaluation), through a
file its controller appends to and the driver polls (:class:`ReportFile`, :func:`report_printer`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ray.train import UserCallback

from trainers.boundary import PackReport
from trainers.files import complete_lines as _lines_and_tail


class ReportFile(UserCallback):
    """Appends rank 0's report to a JSON-lines file. Train runs its callbacks in its controller,
    which it pins to the driver's node, so this works whether or not the workers share its disk."""

    def __init__(self, path: Path):
        self.path = str(path)

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics[0], default=float) + "\n")


def complete_lines(path: Path) -> list[str]:
    """The file's lines up to its last newline: a half-written last line is left for later."""
    return _lines_and_tail(path)[0]


def last_report(path: Path) -> dict:
    lines = complete_lines(path)
    return json.loads(lines[-1]) if lines else {}


def report_printer(path: Path, line: Callable[[dict], str | None], log) -> Callable[[], None]:
    """A function that logs ``line(report)`` for each report appended to ``path`` since its last
    call (reports from before a resume were printed by that earlier run); a line of None is not
    logged."""
    seen = [len(complete_lines(path))]

    def print_new() -> None:
        lines = complete_lines(path)
        for text in lines[seen[0]:]:
            if (message := line(json.loads(text))) is not None:
                log(message)
        seen[0] = max(seen[0], len(lines))

    return print_new


def best_so_far(report: PackReport) -> str:
    """The best fitness reported so far, or why there is none (not the divergence penalty)."""
    if not report.results:
        return "none finished yet"
    if not any(r.status == "ok" for r in report.results):
        return "none ok"
    return f"{report.best_fitness:.4f}"


def pack_line(label: str) -> Callable[[dict], str]:
    def line(result: dict) -> str:
        report = PackReport.from_dict(result)
        return f"  {label}: {report.unit} {report.progress}/{report.total}, best {best_so_far(report)}"

    return line

from ray.tune import Callback  # noqa: E402 - after the Train callback it sits beside


class PackProgress(Callback):
    def __init__(self, log):
        self.log = log

    def on_trial_result(self, iteration, trials, trial, result, **info):
        report = PackReport.from_dict(result)
        if report is None:
            return
        running = sum(t.status == "RUNNING" for t in trials)
        alive = f", {report.alive} training on" if report.unit == "rung" and not report.finished else ""
        self.log(f"  pack {trial.config.get('pack')}: {report.unit} {report.progress}/{report.total}{alive}, "
                 f"best in pack {best_so_far(report)} ({running} trial(s) running)")
