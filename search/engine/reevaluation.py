"""Elite re-evaluation: after the budget, the search's best candidates are trained again on folds
and seeds the search never used, at the full epoch count, next to the controls; the exported
loss is the winner of this stage by a lower confidence bound, not the search's noisy maximum.

The best of many noisy evaluations looks better than it is (the winner's curse); a fresh,
larger sample of its paired margin over the controls says how much. ``reevaluation.json`` is the
stage's record (elites, results, winner, and ``log_told``: how many evaluations the log held when
the elites were chosen); ``reevaluation.csv`` ranks the elites with their search fitness beside
the re-evaluated one. A resumed search keeps a finished stage only while the log still holds what
it saw: once a resume adds evaluations the elites are chosen again and re-evaluated before
anything is exported. An interrupted stage continues from its Train checkpoint (the run is named
after the log position, so a stage for other elites never picks up an old one).
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np

from search.engine.evaluations import SEED_SOURCE, EvaluationLog
from trainers.boundary import CandidateResult, PackJob, PackReport, loss_point, same_point
from trainers.errors import DataWarning
from trainers.files import read_json, write_json

REEVALUATION_FILE = "reevaluation.json"
REEVALUATION_CSV = "reevaluation.csv"
REEVALUATION_RUN = "reevaluation"
LCB_Z = 1.0  # the winner maximises mean - 1 standard error of its re-evaluated fitness


def elites(folder: Path, opts, searcher, plan) -> list[dict]:
    """The elites of the search in ``folder`` (see :func:`choose_elites`)."""
    told = [{"id": e.id, "source": e.source, "vector": list(e.vector), "search_fitness": e.fitness,
             "search_epochs": (e.details or {}).get("epochs")}
            for e in EvaluationLog(folder).told() if e.status == "ok"]
    return choose_elites(told, searcher.optimizer.provide_recommendation().value, plan.controls,
                         opts.task_options.reevaluate, opts.budget)


def choose_elites(told: list[dict], recommendation, controls: list[dict], reevaluate: int, recommendation_id: int) -> list[dict]:
    """The controls, the seed losses, the top ``reevaluate`` other distinct losses of ``told`` (ok
    candidates: id, source, vector, search_fitness) and the optimiser's recommendation when it is a
    point the search never evaluated (noisy optimisers recommend an average). Shared by the product
    and its benchmarks.

    A loss equal to a control or to a better elite is trained once and does not take an elite's
    place: the search starts at PAN and optimisers ask their centre again, so without this the
    elites of a short search can all be copies of a control. A control trained as its exact loss
    (``"exact"``: the loss's name) is not its Taylor point, which may then be an elite."""
    chosen = [{"id": -1 - i, "source": f"control:{c['name']}", "vector": loss_point(c).tolist(),
               "search_fitness": None, **({"exact": c["exact"]} if c.get("exact") else {})}
              for i, c in enumerate(controls)]
    recommended = {"id": recommendation_id, "source": "recommendation", "search_fitness": None,
                   "vector": np.asarray(recommendation, dtype=float).tolist()}
    def new(e: dict) -> bool:
        return not any(same_point(e["vector"], c["vector"]) for c in chosen if not c.get("exact"))

    # A seed loss (a shipped zoo loss, or the user's) is re-evaluated like a control, beside the
    # elites rather than in their place: whether it beats the controls on fresh folds is the question
    # a user who seeds a loss asks, and one noisy halving rung must not drop it (on DBpedia Album with
    # 200 labelled rows halving stopped v3 after 3 epochs; re-evaluated, it still trailed nnPU there).
    for e in sorted(told, key=lambda e: e["id"]):
        if e["source"].startswith(SEED_SOURCE) and new(e):
            chosen.append(e)
    searched = len(chosen) + reevaluate
    for e in sorted(told, key=lambda e: (-e["search_fitness"], e["id"])):
        if len(chosen) < searched and new(e):
            chosen.append(e)
    if new(recommended):
        chosen.append(recommended)
    return chosen


def lower_bound(result: CandidateResult, members: int, z: float = LCB_Z) -> tuple[float, float]:
    """(fitness, standard error) of a re-evaluated candidate, margins in the plan's noise units."""
    if result.status != "ok":
        return float("-inf"), float("nan")
    d = result.details
    scale = np.asarray(d["scale"], dtype=float)
    se = np.nan_to_num(np.asarray(d["sd"], dtype=float)) / math.sqrt(members) / scale
    return result.fitness, float(np.sqrt(np.sum(se**2)) / len(scale))


def reevaluate_elites(folder: Path, opts, plan, searcher, space, worker_loop, log) -> dict:
    """Run (or finish, or skip) the re-evaluation stage and write its files. ``space`` and
    ``worker_loop`` are the task's (the elites' vectors become candidates of that space)."""
    from search.session.background import every
    from search.session.ray_session import train_job
    from search.session.progress import ReportFile, pack_line, report_printer
    path = folder / REEVALUATION_FILE
    told = len(EvaluationLog(folder).told())
    chosen = elites(folder, opts, searcher, plan)
    if path.exists():
        record = read_json(path, "re-evaluation record")
        if _still_current(record, told, chosen):
            return record
        log(f"the re-evaluation in {path.name} saw {record.get('log_told', 'an older')} evaluation(s), the log now "
            f"holds {told}: choosing and re-evaluating the elites again")
    stage = plan.for_reevaluation(opts.task_options, opts.epochs)
    log(f"re-evaluating {len(chosen)} elites (controls included), each trained {stage.members_per_unit} time(s) "
        f"on data splits and seeds the search never used, {opts.epochs} epochs")
    job = PackJob(0, [{"id": e["id"], **space.candidate(e["vector"]), **({"exact": e["exact"]} if e.get("exact") else {})}
                      for e in chosen], stage)
    scaling = reevaluation_scaling(opts)
    progress = folder / "reevaluation.progress.jsonl"
    trainer = train_job(worker_loop, {"job": job}, scaling, f"{REEVALUATION_RUN}-{told}", str(folder / "train"),
                        callbacks=[ReportFile(progress)])
    with every(1.0, report_printer(progress, pack_line("re-evaluation"), log)):
        result = trainer.fit()
    report = PackReport.from_dict(result.metrics)
    if report is None or not report.finished:
        raise RuntimeError(f"the re-evaluation job ended without its results: {result.error}")
    record = {**summarise(chosen, report.results, stage.members_per_unit, search_baseline(folder, plan, chosen)),
              "log_told": told}
    write_json(path, record)
    write_reevaluation_csv(folder / REEVALUATION_CSV, record)  # printed with the leaderboard
    return record


def reevaluation_scaling(opts):
    """One job for the stage, given the CPUs of every trial slot: the search's trials are over,
    and one worker on one CPU would leave the others idle for the longest stage of a small search."""
    from search.session.ray_session import Scaling

    slots = opts.concurrency or 1  # the search driver resolved it before the trials
    return Scaling(opts.workers_per_trial, opts.cpus_per_worker * slots, opts.gpus_per_worker, opts.max_failures)


def _still_current(record: dict, told: int, chosen: list[dict]) -> bool:
    """Whether a finished stage re-evaluated the elites of the log as it is now (a record from
    before ``log_told`` was kept: the same search elites)."""
    if "log_told" in record:
        return record["log_told"] == told
    searched = {r["id"] for r in record.get("rows", []) if r.get("search_fitness") is not None}
    return searched == {e["id"] for e in chosen if e["search_fitness"] is not None}


def search_baseline(folder: Path, plan, chosen: list[dict]) -> float | None:
    """What to subtract from a search fitness to put it in the re-evaluation's units: 0 where the
    search's packs already scored paired margins (PU), else (DPO: agreement) the search's own
    evaluation of a control's point (the seed loss ``dpo``), or None when it has none."""
    if plan.search_fitness_paired:
        return 0.0
    controls = [e["vector"] for e in chosen if e["source"].startswith("control:")]
    at_controls = [e.fitness for e in EvaluationLog(folder).told() if e.status == "ok"
                   and any(same_point(e.vector, c) for c in controls)]
    return max(at_controls, default=None)


def summarise(chosen: list[dict], results: list[CandidateResult], members: int, baseline: float | None = 0.0) -> dict:
    by_id = {r.id: r for r in results}
    rows = []
    for e in chosen:
        r = by_id[e["id"]]
        fitness, se = lower_bound(r, members)
        rows.append({**e, "status": r.status, "reevaluated_fitness": fitness if r.status == "ok" else None,
                     "se": se, "lcb": fitness - LCB_Z * se if r.status == "ok" else None, "details": r.details})
    ok = [row for row in rows if row["lcb"] is not None]
    winner = max(ok, key=lambda row: (row["lcb"], -row["id"]), default=None)
    shrink = [row["search_fitness"] - baseline - row["reevaluated_fitness"] for row in ok
              if row["search_fitness"] is not None and baseline is not None and fully_trained(row)]
    return {"members_per_candidate": members, "z": LCB_Z, "rows": rows,
            "winner": None if winner is None else winner["id"],
            "shrinkage": float(np.mean(shrink)) if shrink else None, "shrinkage_elites": len(shrink)}


def fully_trained(row: dict) -> bool:
    """Whether an elite's search fitness was measured at the epochs it was re-evaluated at. Halving
    stops most candidates at an early rung, where every margin is far lower (the controls learn
    faster in the first epochs): their search fitness is not the same quantity, and counting them
    in the shrinkage made it negative in every multi-set search. Without a recorded epoch count
    (the preference search trains every candidate to the end) the fitness counts."""
    searched = row.get("search_epochs")
    return searched is None or searched == (row.get("details") or {}).get("epochs", searched)


def write_reevaluation_csv(path: Path, record: dict) -> None:
    rows = sorted(record["rows"], key=lambda r: -(r["lcb"] if r["lcb"] is not None else -math.inf))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "id", "source", "search_fitness", "reevaluated_fitness", "se", "lcb", "status", "winner"])
        for rank, r in enumerate(rows, 1):
            writer.writerow([rank, r["id"], r["source"], r["search_fitness"], r["reevaluated_fitness"], r["se"], r["lcb"],
                             r["status"], r["id"] == record["winner"]])


def format_reevaluation(record: dict) -> str:
    lines = [f"re-evaluation ({record['members_per_candidate']} fresh folds x seeds each; winner by mean - "
             f"{record['z']:g} SE):", f"{'id':>6} {'source':<22} {'search':>9} {'re-eval':>9} {'SE':>8} {'LCB':>9}"]
    for r in sorted(record["rows"], key=lambda r: -(r["lcb"] if r["lcb"] is not None else -math.inf)):
        search = "-" if r["search_fitness"] is None else f"{r['search_fitness']:.4f}"
        if r["lcb"] is None:
            lines.append(f"{r['id']:>6} {r['source']:<22} {search:>9} {r['status']:>9}")
            continue
        mark = "  <- exported" if r["id"] == record["winner"] else ""
        lines.append(f"{r['id']:>6} {r['source']:<22} {search:>9} {r['reevaluated_fitness']:>9.4f} {r['se']:>8.4f} "
                     f"{r['lcb']:>9.4f}{mark}")
    if record["shrinkage"] is not None:
        # Signed: positive when the search over-rated its elites (the usual winner's curse), negative when it under-rated them.
        over = record.get("shrinkage_elites")
        lines.append(f"shrinkage (the elites' search fitness minus their re-evaluated fitness, mean"
                     f"{'' if over is None else f' over the {over} searched at the full epochs'}): {record['shrinkage']:+.4f}")
    return "\n".join(lines)


def read_reevaluation(folder: Path, told: int | None = None) -> dict | None:
    """The stage's record while it is current; None without one, or when the log has grown since
    (a resume added evaluations and was stopped before re-evaluating): its winner was chosen among
    other elites, so exporting it, or ranking its numbers beside the new ones, would mislead.
    ``told``: the log's told count where the caller has read the log already."""
    path = Path(folder) / REEVALUATION_FILE
    if not path.exists():
        return None
    record = read_json(path, "re-evaluation record")
    told = len(EvaluationLog(folder).told()) if told is None else told
    if record.get("log_told", told) != told:
        warnings.warn(DataWarning(f"{path}: re-evaluated the elites of {record['log_told']} evaluations, the log now "
                                  f"holds {told}; ignored until `lossforge resume` re-evaluates them"))
        return None
    return record


def exported_loss_note(folder: Path) -> str | None:
    """A line for the final report when the stage's winner is not a new candidate: a control (no
    searched loss beat the controls, so the exported file is that control: its exact loss, or with
    Taylor controls its Taylor point, the exact loss then a flag away) or a shipped loss the search
    started from (``seed:zoo:NAME``: what an earlier search found beat this one's candidates)."""
    record = read_reevaluation(folder)
    if not record or record.get("winner") is None:
        return None
    row = next(r for r in record["rows"] if r["id"] == record["winner"])
    if row["source"].startswith(f"{SEED_SOURCE}zoo:"):
        name = row["source"].split(":", 1)[1]
        return (f"the exported loss is the shipped {name}, a seed loss: on fresh folds or seeds it ranked above the "
                f"controls and every new candidate; --loss {name} trains the same")
    if not row["source"].startswith("control:"):
        return None
    name = row["source"].split(":", 1)[1]
    if row.get("exact"):
        return (f"no searched loss beat the controls on fresh folds or seeds: the exported loss is the exact "
                f"{name} (best_loss.json names it; --loss {name} trains the same)")
    return (f"the re-evaluation exported {row['source']} as its Taylor point: no searched loss beat the controls on "
            f"fresh folds or seeds; the exact loss is --loss {name}")
