"""Results of a search: leaderboard, the best loss as a file and a formula, and plots.

Everything is derived from the evaluation log, so ``lossforge report`` can run while a search
is still writing it.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from search.evaluations import EvaluationLog, Evaluation
from search.space import space_for
from trainers.losses.pu import pan_probability_losses
from trainers.losses.seeds import taylor_point
from trainers.losses.taylor import VARIABLES, TaylorLoss

SPEC_FILE = "search.json"


def load_spec(folder: str | Path) -> dict:
    path = Path(folder) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a lossforge search (no {SPEC_FILE})")
    return json.loads(path.read_text())


def leaderboard(evaluations: list[Evaluation]) -> list[Evaluation]:
    """Told candidates, best first (diverged and errored last, by id)."""
    told = [e for e in evaluations if e.status != "pending"]
    return sorted(told, key=lambda e: (e.status != "ok", -(e.fitness or 0.0) if e.status == "ok" else 0, e.id))


def best_loss(folder: str | Path) -> TaylorLoss | None:
    spec = load_spec(folder)
    board = leaderboard(EvaluationLog(folder).evaluations())
    if not board or board[0].status != "ok":
        return None
    top = board[0]
    return space_for(spec.get("task", "pu"), spec["order"]).to_loss(top.vector, name=f"{spec['name']}-best-{top.id}")


def write_report(folder: str | Path, plots: bool = True) -> dict:
    """Write leaderboard.csv, best_loss.json/.txt and plots; return a summary."""
    folder = Path(folder)
    spec = load_spec(folder)
    space = space_for(spec.get("task", "pu"), spec["order"])
    evaluations = EvaluationLog(folder).evaluations()
    board = leaderboard(evaluations)
    with open(folder / "leaderboard.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "id", "fitness", "status", "source", "pack", "wall_seconds"] + space.names())
        for rank, e in enumerate(board, 1):
            writer.writerow([rank, e.id, e.fitness, e.status, e.source, e.pack, e.wall_seconds] + list(e.vector))
    best = best_loss(folder)
    if best is not None:
        best.save(folder / "best_loss.json")
        (folder / "best_loss.txt").write_text(best.formula() + "\n")
    if plots and board:
        _plot_progress(evaluations, spec, folder / "best_fitness.png")
        if best is not None:
            (_plot_slices if isinstance(best, TaylorLoss) else _plot_preference_loss)(best, folder / "loss_slices.png")
    return {
        "name": spec["name"],
        "budget": spec["budget"],
        "told": len(board),
        "pending": sum(e.status == "pending" for e in evaluations),
        "best": None if best is None else {"id": board[0].id, "fitness": board[0].fitness, "formula": best.formula()},
        "leaderboard": board,
    }


def format_leaderboard(summary: dict, top: int = 10) -> str:
    lines = [f"search {summary['name']}: {summary['told']}/{summary['budget']} evaluated"
             + (f", {summary['pending']} pending" if summary["pending"] else "")]
    lines.append(f"{'rank':>4} {'id':>5} {'fitness':>9} {'status':>9}  source")
    for rank, e in enumerate(summary["leaderboard"][:top], 1):
        lines.append(f"{rank:>4} {e.id:>5} {e.fitness:>9.4f} {e.status:>9}  {e.source}")
    if summary["best"]:
        lines.append(f"best loss (candidate {summary['best']['id']}, fitness {summary['best']['fitness']:.4f}):")
        lines.append(summary["best"]["formula"])
    return "\n".join(lines)


def _plot_progress(evaluations: list[Evaluation], spec: dict, path: Path) -> None:
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
    ax.set_ylabel(f"validation fitness ({spec['fitness']})")
    ax.set_title(f"search {spec['name']} ({spec['optimizer']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_slices(best: TaylorLoss, path: Path) -> None:
    """One panel per variable: each player's loss along its own variables, the others at 0.5.

    PAN is drawn exactly (shifted to 0 at the slice's centre) and as its Taylor point of the
    same order, since the family holds only the latter.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _plot_preference_loss(best, path: Path) -> None:
    """The searched pairwise loss f(s) against DPO's -log s and its Taylor point, shifted to 0 at s = 1/2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
