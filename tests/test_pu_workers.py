"""train-pu --workers: a Ray Train job on a real local cluster, each worker reading its share."""
import json

import pytest

from search.cli import main
from shares_helpers import write_pool

pytestmark = pytest.mark.slow



def test_bad_rows_in_one_share_stop_every_worker_with_one_line(tmp_path, local_ray, capsys):
    pool = write_pool(tmp_path / "pool", nan_row=650)  # in the second worker's share only
    run = tmp_path / "run"
    code = main(["train-pu", "--train", str(pool), "--workers", "2", "--cpus-per-worker", "0.5", "--epochs", "1",
                 "--run-dir", str(run), "--save", str(tmp_path / "model")])
    err = capsys.readouterr().err
    assert code == 2 and "column 'embedding'" in err and "NaN" in err and "Traceback" not in err
    assert not run.exists() and not (tmp_path / "model").exists()  # nothing written


def test_float16_pool_trains_in_sync_and_resume_finishes_from_the_checkpoint(tmp_path, local_ray, capsys):
    pool = write_pool(tmp_path / "pool")
    args = ["train-pu", "--train", str(pool), "--workers", "2", "--cpus-per-worker", "0.5", "--epochs", "3",
            "--hidden", "32", "--labelled-frac", "0.3", "--lr", "0.01", "--batch-size", "64", "--run-dir", str(tmp_path / "run"), "--save", str(tmp_path / "m")]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3] and metrics["replicas_in_sync"]
    assert [w["rows"] for w in metrics["workers"]] == [500, 500]
    assert all(w["bytes"] == 500 * 16 * 2 for w in metrics["workers"])  # float16 in memory
    assert metrics["val_fitness"] > 0.6  # it learned (the in-process run of these settings: 0.73)
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # the same command again is refused
    assert main(["train-pu", "--run-dir", str(tmp_path / "run"), "--resume"]) == 0
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert again["val_fitness"] == metrics["val_fitness"] and again["threshold_logit"] == metrics["threshold_logit"]


def test_a_fitness_that_needs_the_prior_gets_it_on_workers_as_in_process(tmp_path, local_ray):
    """train-pu --workers 2 --fitness pu_f1 --prior 0.3: the workers follow the one prior rule."""
    pool = write_pool(tmp_path / "pool")
    common = ["train-pu", "--train", str(pool), "--fitness", "pu_f1", "--prior", "0.3", "--epochs", "1",
              "--hidden", "32", "--labelled-frac", "0.3"]
    assert main([*common, "--out", str(tmp_path / "in_process.json")]) == 0
    assert main([*common, "--workers", "2", "--cpus-per-worker", "0.5", "--run-dir", str(tmp_path / "run")]) == 0
    in_process = json.loads((tmp_path / "in_process.json").read_text())
    on_workers = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert in_process["prior_used"] == on_workers["prior_used"] == 0.3
    assert on_workers["status"] == "ok" and on_workers["fitness"] == "pu_f1"
