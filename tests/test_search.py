"""End-to-end searches on a real local Ray cluster (Tune + Train + Nevergrad), tiny budgets."""
import csv
import json
import math
import time

import pytest
import ray

from search.cli import main
from search.evaluations import EvaluationLog
from search.searcher import PackSearcher
from search.tuner import RAY_ENV, SearchOptions, run_search
from trainers.losses.taylor import TaylorLoss
from trainers.pu import DIVERGED_FITNESS

pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray():
    # One fresh cluster per test: a search is one driver's job.
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
    yield
    ray.shutdown()


def test_search_end_to_end(tmp_path, local_ray, capsys):
    lines = []
    opts = SearchOptions(name="e2e", storage=str(tmp_path), budget=6, pack=3, epochs=2, concurrency=1,
                         seed_losses=["pan", "naive"])
    summary = run_search(opts, log=lines.append)
    folder = tmp_path / "e2e"
    # Every pack gave its CPUs back (a Train run killed mid-shutdown leaks its placement group).
    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2
    told = EvaluationLog(folder).told()
    assert sorted(e.id for e in told) == list(range(6))  # exactly the budget, each once
    assert [e.source for e in sorted(told, key=lambda e: e.id)][:2] == ["seed:pan", "seed:naive"]
    assert all(e.status == "ok" and 0.0 <= e.fitness <= 1.0 for e in told)
    # progress was shown while it ran, and the leaderboard at the end
    assert any("epoch 1/2" in line for line in lines) and any("6/6 evaluated" in line for line in lines)
    assert any(line.startswith("L_D = ") or "\nL_D = " in line for line in lines)

    rows = list(csv.DictReader(open(folder / "leaderboard.csv")))
    assert len(rows) == 6 and float(rows[0]["fitness"]) == max(e.fitness for e in told)
    for name in ("best_loss.json", "best_loss.txt", "best_fitness.png", "loss_slices.png", "final_report.json"):
        assert (folder / name).stat().st_size > 0, name
    assert list((folder / "tune-1").rglob("progress.csv")), "Tune's own CSV logs stay on"
    assert list((folder / "train").glob("pack-*/checkpoint_*")), "a checkpoint per epoch"

    best = TaylorLoss.load(folder / "best_loss.json")
    assert best.order == 2 and best.formula() == (folder / "best_loss.txt").read_text().strip()
    final = json.loads((folder / "final_report.json").read_text())
    assert 0.0 < final["best"]["test_auc"] <= 1.0 and summary["best"]["fitness"] == pytest.approx(float(rows[0]["fitness"]))

    # the best loss loads into the trainer
    assert main(["train-pu", "--smoke-test", "--loss", str(folder / "best_loss.json")]) == 0
    # an existing name is refused, nothing overwritten
    before = (folder / "evaluations.jsonl").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        run_search(SearchOptions(name="e2e", storage=str(tmp_path), budget=2))
    assert main(["search", "--name", "e2e", "--storage", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (folder / "evaluations.jsonl").read_bytes() == before
    # resuming a finished search evaluates nothing more
    run_search(SearchOptions(name="e2e", storage=str(tmp_path)), resume=True, log=lines.append)
    assert len(EvaluationLog(folder).told()) == 6 and (folder / "evaluations.jsonl").read_bytes() == before
    # report prints the leaderboard from the log
    assert main(["report", "e2e", "--storage", str(tmp_path)]) == 0
    assert "6/6 evaluated" in capsys.readouterr().out


class NaNSearcher(PackSearcher):
    """A real searcher whose second candidate comes out NaN, as a broken optimiser's might."""

    def suggest(self, trial_id):
        config = super().suggest(trial_id)
        if isinstance(config, dict) and config["pack"] == 0:
            config["candidates"][1]["vector"][0] = math.nan
        return config


def test_a_nan_candidate_is_penalised_and_the_search_finishes(tmp_path, local_ray):
    opts = SearchOptions(name="nan", storage=str(tmp_path), budget=4, pack=2, epochs=2, concurrency=1, seed_losses=[])
    run_search(opts, log=lambda m: None, searcher_class=NaNSearcher)
    told = {e.id: e for e in EvaluationLog(tmp_path / "nan").told()}
    assert sorted(told) == [0, 1, 2, 3]
    assert told[1].status == "diverged" and told[1].fitness == DIVERGED_FITNESS
    assert all(told[i].status == "ok" for i in (0, 2, 3))


def test_bad_search_options_fail_before_ray_starts(tmp_path, capsys):
    assert main(["search", "--name", "x", "--storage", str(tmp_path), "--optimizer", "TwoPointDE"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["search", "--name", "x", "--storage", str(tmp_path), "--order", "7"]) == 2
    assert main(["search", "--name", "x", "--storage", str(tmp_path), "--seed-losses", "pan,bogus"]) == 2
    assert main(["search", "--name", "x", "--storage", str(tmp_path), "--train", str(tmp_path / "none.parquet")]) == 2
    assert main(["resume", "never-ran", "--storage", str(tmp_path)]) == 2
    assert not (tmp_path / "x").exists()


def test_submit_passes_every_search_option_through():
    from search.cli import build_parser, options_from_args, search_argv

    args = build_parser().parse_args(["submit", "--name", "s", "--budget", "100", "--gpus-per-worker", "0.25",
                                      "--seed-losses", "pan,nnpu", "--order", "3", "--train", "/data/shards"])
    opts = options_from_args(args)
    again = options_from_args(build_parser().parse_args(["search", *search_argv(opts)]))
    assert again == opts
    assert opts.storage == "~/lossforge_results"  # a job's working directory is temporary


def test_pack_auto_spreads_the_budget_over_one_round_within_caps():
    from search.cli import build_parser, options_from_args
    from search.tuner import auto_pack

    assert auto_pack(SearchOptions(budget=32), concurrency=2) == 16
    assert auto_pack(SearchOptions(budget=5), concurrency=2) == 3
    assert auto_pack(SearchOptions(budget=5000), concurrency=2) == 64  # CPU cap, in members
    assert auto_pack(SearchOptions(budget=5000, seeds_per_candidate=4), concurrency=2) == 16
    assert auto_pack(SearchOptions(budget=5000, gpus_per_worker=0.25), concurrency=4) == 256
    assert auto_pack(SearchOptions(task="dpo", budget=5000), concurrency=1) == 16
    args = build_parser().parse_args(["search", "--pack", "auto"])
    assert options_from_args(args).pack is None
    assert options_from_args(build_parser().parse_args(["search", "--pack", "12"])).pack == 12
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--pack", "many"])
