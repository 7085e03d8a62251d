"""Live progress of a search: each pack's rung (PU) or candidate (DPO) as its workers report."""
from __future__ import annotations

from trainers.boundary import PackReport

try:
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - Ray is a dependency; keeps `report` usable without it
    _TuneCallback = object


class PackProgress(_TuneCallback):
    def __init__(self, log):
        self.log = log

    def on_trial_result(self, iteration, trials, trial, result, **info):
        report = PackReport.from_dict(result)
        if report is None:
            return
        running = sum(t.status == "RUNNING" for t in trials)
        alive = f", {report.alive} training on" if report.unit == "rung" and not report.finished else ""
        self.log(f"  pack {trial.config.get('pack')}: {report.unit} {report.progress}/{report.total}{alive}, "
                 f"best in pack {report.best_fitness:.4f} ({running} trial(s) running)")
