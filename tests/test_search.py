"""End-to-end searches on a real local Ray cluster (Tune + Train + Nevergrad), tiny budgets."""
import csv
import json
import math
import time

import numpy as np
import pytest
import ray

from trainers.errors import UsageError

from search.cli import main
from search.engine.evaluations import EvaluationLog
from search.engine.options import SearchOptions
from search.engine.searcher import PackSearcher
from search.tasks import TASKS, load_search
from search.tasks.pu import PUSearchOptions
from search.engine.driver import run_search
from trainers.boundary import DIVERGED_FITNESS
from trainers.losses.taylor import TaylorLoss

# Small but complete: folds, paired controls, one halving rung, and a re-evaluation stage.
SMALL_PU = PUSearchOptions(rungs=[1], reevaluate=2, reevaluation_folds=2, reevaluation_seeds=1)

pytestmark = pytest.mark.slow



def test_search_evaluates_exactly_the_budget_reevaluates_the_elites_and_exports_the_winner(tmp_path, local_ray, capsys):
    lines = []
    opts = SearchOptions(name="e2e", storage=str(tmp_path), budget=6, pack=3, epochs=2, concurrency=1,
                         seed_losses=["pan", "naive"], task_options=SMALL_PU)
    summary = run_search(TASKS["pu"], opts, log=lines.append)
    folder = tmp_path / "e2e"
    # Every pack gave its CPUs back (a Train run killed mid-shutdown leaks its placement group).
    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2
    told = EvaluationLog(folder).told()
    assert sorted(e.id for e in told) == list(range(6))  # exactly the budget, each once
    assert [e.source for e in sorted(told, key=lambda e: e.id)][:2] == ["seed:pan", "seed:naive"]
    # fitness is the paired margin over the best control (AUC differences: within [-1, 1]); the
    # optimiser's centre (all coefficients 0: no loss at all) is rejected before training
    assert all((e.status == "ok" and -1.0 <= e.fitness <= 1.0)
               or (e.status == "rejected" and e.fitness == DIVERGED_FITNESS) for e in told)
    assert sum(e.status == "ok" for e in told) >= 5
    seeds = [e for e in told if e.source.startswith("seed:")]
    assert all(e.fitness <= 0.0 for e in seeds), "a hand-made loss cannot beat itself, the control"
    # progress was shown while it ran, and the leaderboard at the end
    assert any("rung 1/2" in line for line in lines) and any("6/6 evaluated" in line for line in lines)
    assert any(line.startswith("L_D = ") or "\nL_D = " in line for line in lines)
    # the elites were re-evaluated on fresh folds and the exported loss is that stage's winner
    record = json.loads((folder / "reevaluation.json").read_text())
    assert {r["source"] for r in record["rows"]} >= {"control:pan", "control:naive"}
    # the elites: the best two distinct losses; one equal to a control (the seeds, or the optimiser
    # asking its PAN centre again) is trained once, as that control, and takes no elite's place
    seen = [e.vector for e in told if e.source in ("seed:pan", "seed:naive")]
    elites = []
    for e in sorted((e for e in told if e.status == "ok"), key=lambda e: (-e.fitness, e.id)):
        if len(elites) < 2 and not any(np.allclose(e.vector, v, atol=1e-9) for v in seen):
            elites.append(e.id)
            seen.append(e.vector)
    assert {r["id"] for r in record["rows"] if r["search_fitness"] is not None} == set(elites) and len(elites) == 2
    winner = next(r for r in record["rows"] if r["id"] == record["winner"])
    assert winner["lcb"] == max(r["lcb"] for r in record["rows"] if r["lcb"] is not None)
    assert TaylorLoss.load(folder / "best_loss.json").coefficients == pytest.approx(winner["vector"][:-4])
    assert any("shrinkage" in line for line in lines) or record["shrinkage"] is None
    # the shrinkage compares like with like: only elites whose search fitness came from the full epochs
    full = [r for r in record["rows"] if r["search_fitness"] is not None
            and next(e for e in told if e.id == r["id"]).details["epochs"] == r["details"]["epochs"]]
    assert record["shrinkage_elites"] == len(full)
    if full:
        assert record["shrinkage"] == pytest.approx(np.mean([r["search_fitness"] - r["reevaluated_fitness"] for r in full]))

    rows = list(csv.DictReader(open(folder / "leaderboard.csv")))
    assert len(rows) == 6 and float(rows[0]["fitness"]) == max(e.fitness for e in told)
    for name in ("best_loss.json", "best_loss.txt", "best_fitness.png", "loss_slices.png", "final_report.json",
                 "reevaluation.csv"):
        assert (folder / name).stat().st_size > 0, name
    assert list((folder / "tune-1").rglob("progress.csv")), "Tune's own CSV logs stay on"
    assert list((folder / "train").glob("pack-*/checkpoint_*")), "a checkpoint per epoch"

    best = TaylorLoss.load(folder / "best_loss.json")
    assert best.order == 2 and best.formula() == (folder / "best_loss.txt").read_text().strip()
    final = json.loads((folder / "final_report.json").read_text())
    (dataset,) = final["datasets"]
    assert 0.0 < dataset["best"]["test_auc"] <= 1.0 and 0.0 < dataset["pan"]["test_auc"] <= 1.0
    assert summary["best"]["id"] == record["winner"] and "re-evaluation winner" in summary["best"]["chosen"]
    # an exported control is its Taylor point: the last line names the exact loss to train instead
    notes = [line for line in lines if "as its Taylor point" in line]
    if winner["source"].startswith("control:"):
        assert notes == [f"the re-evaluation exported {winner['source']} as its Taylor point: no searched loss beat "
                         f"the controls on fresh folds or seeds; the exact loss is --loss {winner['source'][8:]}"]
    else:
        assert notes == []

    # the best loss loads into the trainer
    assert main(["train-pu", "--smoke-test", "--loss", str(folder / "best_loss.json")]) == 0
    # an existing name is refused, nothing overwritten
    before = (folder / "evaluations.jsonl").read_bytes()
    with pytest.raises(UsageError, match="already holds a run"):
        run_search(TASKS["pu"], SearchOptions(name="e2e", storage=str(tmp_path), budget=2))
    assert main(["search", "--name", "e2e", "--storage", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (folder / "evaluations.jsonl").read_bytes() == before
    # resuming a finished search evaluates nothing more
    run_search(*load_search(tmp_path / "e2e"), resume=True, log=lines.append)
    assert len(EvaluationLog(folder).told()) == 6 and (folder / "evaluations.jsonl").read_bytes() == before
    # report prints the leaderboard from the log
    assert main(["report", "e2e", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "6/6 evaluated" in out and "re-evaluation" in out


class NaNSearcher(PackSearcher):
    """A real searcher whose second candidate comes out NaN, as a broken optimiser's might."""

    def suggest(self, trial_id):
        config = super().suggest(trial_id)
        if isinstance(config, dict) and config["pack"] == 0:
            config["candidates"][1]["vector"][0] = math.nan
        return config


def test_a_relative_val_path_reaches_the_workers_and_the_record(tmp_path, local_ray, pu_parquet, monkeypatch):
    """Train workers run inside their trial folders: a --val typed relative to where the command
    started must still be that file there (it was read as the trial folder's, and every candidate
    failed), and search.json records it absolutely so a resume from elsewhere reads the same rows."""
    from conftest import write_embeddings

    rng = np.random.default_rng(1)
    label = (rng.random(120) < 0.4).astype(np.int8)
    write_embeddings(tmp_path / "val.parquet", rng.normal(size=(120, 16)) + 1.5 * label[:, None] * np.eye(16)[0], label=label)
    monkeypatch.chdir(tmp_path)
    opts = SearchOptions(name="relval", storage="results", budget=2, pack=2, epochs=1, concurrency=1, seed_losses=[],
                         train=["train"], task_options=PUSearchOptions(val="val.parquet", rungs=[], reevaluate=0, folds=1))
    run_search(TASKS["pu"], opts, log=lambda m: None)
    folder = tmp_path / "results" / "relval"
    assert [e.status for e in EvaluationLog(folder).told()] == ["ok", "ok"]
    spec = json.loads((folder / "search.json").read_text())
    assert spec["task_options"]["val"] == str(tmp_path / "val.parquet")


def test_with_labelled_rows_the_controls_train_exactly_and_a_control_that_wins_is_exported_by_name(tmp_path, local_ray):
    """--val-size: the controls are the exact hand-made losses (no longer their Taylor points, as
    with PU only), nnPU among them, in the packs and in the re-evaluation; the export follows the winner."""
    opts = SearchOptions(name="exact", storage=str(tmp_path), budget=2, pack=2, epochs=2, concurrency=1,
                         seed_losses=["naive"], task_options=PUSearchOptions(val_size=300, rungs=[], reevaluate=1,
                                                                               reevaluation_folds=2))
    run_search(TASKS["pu"], opts, log=lambda m: None)
    folder = tmp_path / "exact"
    seed = next(e for e in EvaluationLog(folder).told() if e.source == "seed:naive")
    assert seed.status == "ok" and seed.fitness != 0.0, "naive's Taylor point is paired with the exact naive"
    record = json.loads((folder / "reevaluation.json").read_text())
    controls = {r["source"]: r.get("exact") for r in record["rows"] if r["source"].startswith("control:")}
    assert controls == {"control:pan": "pan", "control:naive": "naive", "control:nnpu": "nnpu"}, \
        "with labelled rows the prior is known and nnPU joins the default controls"
    winner = next(r for r in record["rows"] if r["id"] == record["winner"])
    exported = json.loads((folder / "best_loss.json").read_text())
    assert exported["family"] == ("exact" if winner.get("exact") else "taylor")
    assert exported.get("loss") == winner.get("exact")


def test_a_nan_candidate_is_penalised_and_the_search_finishes(tmp_path, local_ray):
    opts = SearchOptions(name="nan", storage=str(tmp_path), budget=4, pack=2, epochs=2, concurrency=1, seed_losses=[],
                         task_options=PUSearchOptions(rungs=[], reevaluate=0))
    run_search(TASKS["pu"], opts, log=lambda m: None, searcher_class=NaNSearcher)
    told = {e.id: e for e in EvaluationLog(tmp_path / "nan").told()}
    assert sorted(told) == [0, 1, 2, 3]
    assert told[1].status == "diverged" and told[1].fitness == DIVERGED_FITNESS
    assert all(told[i].status in ("ok", "rejected") for i in (0, 2, 3))  # rejected: a point that cannot rank
