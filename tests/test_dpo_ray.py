"""DPO on the shared Ray worker infrastructure: train-dpo as a Ray Train job (killed and resumed),
and ``search --task dpo`` with Tune + Nevergrad, on real local clusters."""
import json
import os
import signal

import pytest
from raycluster import files_growth, kill_session, lossforge, wait_exit, wait_for

from search.engine.evaluations import EvaluationLog
from search.engine.options import SearchOptions
from search.tasks import TASKS
from search.tasks.preference import PreferenceSearchOptions
from search.engine.driver import run_search
from trainers.losses.preference_taylor import PreferenceTaylorLoss
from trainers.scorer import PreferenceScorer

pytestmark = pytest.mark.slow


def test_train_dpo_killed_after_an_epoch_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["train-dpo", "--out", str(out), "--epochs", "3", "--max-pairs", "2000"]
    driver = lossforge(*args, cwd=tmp_path, log=tmp_path / "run1.log")
    try:
        # Train records a checkpoint in its snapshot once the copy is complete: kill after that.
        snapshot = out / "ray" / "train-dpo" / "checkpoint_manager_snapshot.json"
        wait_for(lambda: snapshot.exists() and '"checkpoint_dir_name"' in snapshot.read_text(), 240, "the first checkpoint",
                 files_growth(out, tmp_path / "run1.log"))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        kill_session(driver.pid)
    assert not (out / "metrics.json").exists(), (tmp_path / "run1.log").read_text()[-3000:]

    # The same command again is refused (nothing lost); --resume continues.
    again = lossforge(*args, cwd=tmp_path, log=tmp_path / "again.log")
    assert wait_exit(again, 120, files_growth(tmp_path / "again.log")) == 2 and "--resume" in (tmp_path / "again.log").read_text()
    resumed = lossforge("train-dpo", "--out", str(out), "--resume", cwd=tmp_path, log=tmp_path / "run2.log")
    try:
        assert wait_exit(resumed, 240, files_growth(out, tmp_path / "run2.log")) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    finally:
        kill_session(resumed.pid)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert progress[-1]["epoch"] == 3 and progress[-1]["resumed_from_epoch"] >= 1
    assert "resumed from epoch" in (tmp_path / "run2.log").read_text()
    assert metrics["test"]["agreement"] > 0.6 and metrics["test"]["pairs_per_second"] > 0
    assert 0.4 < metrics["test_length_heuristic"]["agreement"] < 0.75
    scorer = PreferenceScorer.load(out / "scorer")
    assert scorer.meta["mode"] == "encoder" and scorer.meta["loss"] == "dpo"



def test_dpo_search_tells_every_candidate_reevaluates_elites_beside_dpo_and_scores_the_winner_once(tmp_path, local_ray):
    lines = []
    opts = SearchOptions(task="dpo", name="d", storage=str(tmp_path), budget=4, pack=2, epochs=1, concurrency=1,
                         seed_losses=["dpo", "sigmoid"],
                         task_options=PreferenceSearchOptions(max_pairs=400, reevaluate=2, reevaluation_seeds=2))
    summary = run_search(TASKS["dpo"], opts, log=lines.append)
    folder = tmp_path / "d"
    told = EvaluationLog(folder).told()
    assert sorted(e.id for e in told) == [0, 1, 2, 3]
    assert [e.source for e in sorted(told, key=lambda e: e.id)][:2] == ["seed:dpo", "seed:sigmoid"]
    seeds = [e.vector for e in told if e.source.startswith("seed:")]
    assert all(e.vector not in seeds for e in told if not e.source.startswith("seed:"))  # the optimiser's own points
    assert all(e.status == "ok" and 0.0 <= e.fitness <= 1.0 for e in told)
    assert any("candidate 2/2" in line for line in lines)
    # The re-evaluation: the dpo control, the seed sigmoid (a seed loss is re-evaluated whatever its rank),
    # the top 2 other distinct elites (seed:dpo is the control's own point, so it does not take an elite's
    # place) and perhaps the recommendation, each trained on 2 fresh seeds; a fitness there is the paired
    # margin in agreement over dpo on the same seed.
    record = json.loads((folder / "reevaluation.json").read_text())
    rows = {r["source"] if r["source"].startswith("control:") else r["id"]: r for r in record["rows"]}
    control = rows.pop("control:dpo")
    assert control["reevaluated_fitness"] == 0.0 and control["details"]["margins"] == [0.0, 0.0]
    searched = [r for r in rows.values() if r["search_fitness"] is not None]
    assert sorted(r["id"] for r in searched) == [1, 2, 3], "seed:sigmoid beside the two optimiser points"
    for r in rows.values():
        agreements, margins = r["details"]["agreements"], r["details"]["margins"]
        assert len(margins) == 2 and all(0.0 <= a <= 1.0 for a in agreements)
        assert margins == pytest.approx([a - c for a, c in zip(agreements, control["details"]["agreements"])])
        assert r["reevaluated_fitness"] == pytest.approx(sum(margins) / 2)
    # ... the fresh seeds are other splits and initial weights than the search's: dpo's own agreement moves
    seed_dpo = next(e for e in told if e.source == "seed:dpo")
    assert control["details"]["agreements"] != [seed_dpo.fitness] * 2
    # shrinkage in the stage's units: a search agreement minus the search's own dpo agreement, minus the margin
    assert record["shrinkage"] == pytest.approx(
        sum(r["search_fitness"] - seed_dpo.fitness - r["reevaluated_fitness"] for r in searched) / len(searched))
    winner = max((r for r in record["rows"] if r["lcb"] is not None), key=lambda r: r["lcb"])
    assert record["winner"] == winner["id"] == summary["best"]["id"]
    assert any(line.startswith("re-evaluating") for line in lines)
    best = PreferenceTaylorLoss.load(folder / "best_loss.json")
    assert best.order == 2
    final = json.loads((folder / "final_report.json").read_text())
    assert set(final) == {"best", "dpo"} and 0.0 < final["best"]["test_agreement"] <= 1.0
    notes = [line for line in lines if "as its Taylor point" in line]
    assert len(notes) == (1 if winner["source"].startswith("control:") else 0)
    assert (folder / "loss_slices.png").stat().st_size > 0


def test_pair_mode_search_trains_over_one_cache_and_scores_best_and_dpo_on_test(tmp_path, local_ray):
    """``search --task dpo --mode pair``: every pack trains its candidates over the lower-layer
    state cache (filled once, shared by packs and the final report), the fitness is the pair
    judge's validation agreement, and the best loss and dpo are scored on the test pairs."""
    from trainers.dpo import default_pairs

    lines, cache = [], tmp_path / "cache"
    # (no re-evaluation here: the built-in model's weights, so its cache keys, change with the seed)
    options = PreferenceSearchOptions(mode="pair", top_layers=1, cache_dir=str(cache), max_pairs=300, reevaluate=0)
    opts = SearchOptions(task="dpo", name="p", storage=str(tmp_path), budget=4, pack=2, epochs=1, concurrency=1,
                         task_options=options)
    run_search(TASKS["dpo"], opts, log=lines.append)
    folder = tmp_path / "p"
    told = EvaluationLog(folder).told()
    assert sorted(e.id for e in told) == [0, 1, 2, 3]
    assert all(e.status == "ok" and 0.0 <= e.fitness <= 1.0 for e in told), told
    # Pair mode caches the distinct texts of the whole pair set (test texts are encoded raw, as served).
    train, _ = default_pairs(0)
    states = list(cache.rglob("*.bin"))
    assert 0 < len(states) <= len(set(train.a) | set(train.b)) and not list(cache.rglob("*.tmp"))
    assert any(line.startswith("cache ready:") and "computed now" in line for line in lines)  # the driver filled it
    final = json.loads((folder / "final_report.json").read_text())
    assert set(final) == {"best", "dpo"}
    assert all(0.0 < final[k]["test_agreement"] <= 1.0 and final[k]["status"] == "ok" for k in final)
    assert json.loads((folder / "search.json").read_text())["task_options"]["mode"] == "pair"


def test_a_diverged_train_dpo_is_one_line_naming_lr_and_its_epoch_line_says_diverged(tmp_path, local_ray, capsys):
    from search.cli import main

    assert main(["train-dpo", "--smoke-test", "--lr", "1e4", "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert "epoch 1/1  diverged" in captured.out and "Traceback" not in captured.err
    (line,) = captured.err.strip().splitlines()
    assert "diverged" in line and "--lr 10000" in line and "no scorer was saved" in line
    assert not (tmp_path / "run" / "scorer").exists()


def test_train_dpo_with_two_data_parallel_workers(tmp_path, local_ray):
    from search.session.ray_session import Scaling
    from search.jobs.train_dpo import run_train_dpo
    from trainers.dpo import DPOConfig

    lines = []
    metrics = run_train_dpo(DPOConfig(epochs=2, max_pairs=800), None, None, str(tmp_path / "ddp"),
                            Scaling(workers=2, cpus_per_worker=0.5), log=lines.append)
    assert metrics["workers"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    # Each worker trained on half of every batch; averaged gradients kept their weights identical,
    # as the workers themselves checked each epoch (kept in the run's history, not a side file).
    assert [h["replicas_in_sync"] for h in metrics["history"]] == [True, True] and metrics["replicas_in_sync"]
    progress = [json.loads(line) for line in (tmp_path / "ddp" / "progress.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in progress] == [1, 2]
    assert metrics["test"]["agreement"] > 0.55 and any("epoch 2/2" in line for line in lines)
