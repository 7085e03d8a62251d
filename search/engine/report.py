"""Results of a search: leaderboard, the best loss as a file and a formula, and plots.

Everything is derived from the evaluation log (and, once the elites are re-evaluated, from
``reevaluation.json``), so ``lossforge report`` can run while a search is still writing.
The exported best loss is the re-evaluation's winner where there is one, else the search's top.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from search.engine.evaluations import Evaluation, EvaluationLog
from search.engine.options import SearchOptions
from search.engine.reevaluation import format_reevaluation, read_reevaluation
from trainers.errors import DataWarning, UsageError
from trainers.files import read_json, write_text_atomic
from trainers.losses.exact import ExactLoss

SPEC_FILE = "search.json"


def leaderboard(evaluations: list[Evaluation]) -> list[Evaluation]:
    """Told candidates, best first (diverged, rejected and errored last, by id)."""
    told = [e for e in evaluations if e.status != "pending"]
    return sorted(told, key=lambda e: (e.status != "ok", -(e.fitness or 0.0) if e.status == "ok" else 0, e.id))


def best_candidate(folder: Path, board: list[Evaluation], reevaluation: dict | None) -> tuple[int, list[float], str, str | None] | None:
    """(id, vector, how it was chosen, the hand-made loss it is where a control trained exactly
    won) of the loss to export."""
    if reevaluation and reevaluation.get("winner") is not None:
        row = next(r for r in reevaluation["rows"] if r["id"] == reevaluation["winner"])
        return row["id"], row["vector"], f"re-evaluation winner ({row['source']})", row.get("exact")
    if board and board[0].status == "ok":
        return board[0].id, board[0].vector, "search's best", None
    return None


def write_report(folder: str | Path, task, opts: SearchOptions, plots: bool = True) -> dict:
    """Write leaderboard.csv, best_loss.json/.txt and plots of the search ``opts`` of ``task``
    (a :class:`search.tasks.Task`) in ``folder``; return a summary."""
    folder = Path(folder)
    space = task.space(opts.order)
    evaluations = EvaluationLog(folder).evaluations()
    if twice := EvaluationLog(folder).duplicate_tells():
        warnings.warn(DataWarning(f"{folder / 'evaluations.jsonl'}: candidates {', '.join(map(str, twice[:10]))}"
                                  f"{' ...' if len(twice) > 10 else ''} were told more than once (two commands wrote "
                                  "this search at once); the first result of each counts"))
    board = leaderboard(evaluations)
    reevaluation = read_reevaluation(folder, told=len(board))
    _write_leaderboard(folder / "leaderboard.csv", board, space.names(), reevaluation)
    chosen = best_candidate(folder, board, reevaluation)
    best = None
    if chosen is not None:
        cid, vector, how, exact = chosen
        name = f"{opts.name}-best-{cid}"
        best = ExactLoss(exact, name) if exact else space.to_loss(vector, name=name)
        best.save(folder / "best_loss.json")
        write_text_atomic(folder / "best_loss.txt", best.formula() + "\n")
    (folder / "loss_slices.png").unlink(missing_ok=True)  # never a plot of an earlier export
    if plots and board:
        _plot_progress(evaluations, opts, folder / "best_fitness.png")
        if best is not None and not isinstance(best, ExactLoss):
            task.plot_best(best, folder / "loss_slices.png")
    fitness = {e.id: e.fitness for e in board}
    return {
        "name": opts.name,
        "budget": opts.budget,
        "told": len(board),
        "pending": sum(e.status == "pending" for e in evaluations),
        "best": None if chosen is None else {"id": chosen[0], "fitness": fitness.get(chosen[0]), "chosen": chosen[2],
                                             "formula": best.formula()},
        "leaderboard": board,
        "reevaluation": reevaluation,
    }


def _write_leaderboard(path: Path, board: list[Evaluation], names: list[str], reevaluation: dict | None) -> None:
    reevaluated = {r["id"]: r for r in (reevaluation or {}).get("rows", [])}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "id", "fitness", "reevaluated_fitness", "lcb", "status", "source", "pack", "rung",
                         "margins", "wall_seconds"] + names)
        for rank, e in enumerate(board, 1):
            r, d = reevaluated.get(e.id, {}), e.details or {}
            margins = ";".join(f"{m:.5f}" for m in d.get("margin", []) if m is not None)
            writer.writerow([rank, e.id, e.fitness, r.get("reevaluated_fitness"), r.get("lcb"), e.status, e.source, e.pack,
                             d.get("rung"), margins, e.wall_seconds] + list(e.vector))


def format_leaderboard(summary: dict, top: int = 10) -> str:
    lines = [f"search {summary['name']}: {summary['told']}/{summary['budget']} evaluated"
             + (f", {summary['pending']} pending" if summary["pending"] else "")]
    lines.append(f"{'rank':>4} {'id':>5} {'fitness':>9} {'status':>9} {'rung':>4}  source")
    for rank, e in enumerate(summary["leaderboard"][:top], 1):
        rung = (e.details or {}).get("rung", "")
        lines.append(f"{rank:>4} {e.id:>5} {e.fitness:>9.4f} {e.status:>9} {rung!s:>4}  {e.source}")
    if summary.get("reevaluation"):
        lines.append(format_reevaluation(summary["reevaluation"]))
    if summary["best"]:
        lines.append(f"best loss (candidate {summary['best']['id']}, {summary['best']['chosen']}):")
        lines.append(summary["best"]["formula"])
    return "\n".join(lines)


def _plot_progress(evaluations: list[Evaluation], opts: SearchOptions, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    told = [e for e in evaluations if e.status != "pending"]
    fitness = np.array([e.fitness if e.status == "ok" else np.nan for e in told])
    best = np.fmax.accumulate(np.where(np.isnan(fitness), -np.inf, fitness))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(told) + 1), fitness, ".", alpha=0.5, label="candidate")
    ax.plot(np.arange(1, len(told) + 1), np.where(np.isinf(best), np.nan, best), "-", label="best so far")
    ax.set_xlabel("evaluation")
    ax.set_ylabel(f"fitness ({getattr(opts.task_options, 'fitness', '')})")
    ax.set_title(f"search {opts.name} ({opts.optimizer})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
