"""The PU recipe: it learns, it is deterministic, packing changes nothing, divergence is contained."""
import json

import numpy as np
import pytest
import torch

from search.cli import main
from trainers.data.pu import make_pu_split
from trainers.data.synthetic import SyntheticSpec, synthetic_pu_problem
from trainers.losses.pu import pan_probability_losses
from trainers.losses.taylor import TaylorLoss, num_coefficients
from trainers.pu import (
    BASELINES,
    Objective,
    PUConfig,
    TrainTensors,
    ValidationSets,
    build_population,
    evaluate_members,
    train_epoch,
    train_pu,
)

SMALL = SyntheticSpec(n_train=1500, n_test=500)


@pytest.fixture(scope="module")
def small():
    return synthetic_pu_problem(SMALL)


def test_default_problem_is_learned_well_above_chance():
    result = train_pu(PUConfig(loss="naive", epochs=15))
    assert result["status"] == "ok"
    assert result["test_auc"] > 0.9 and result["test_f1"] > 0.7  # 5 seeds, 10 epochs: 98.3 AUC, 78.0 F1
    assert result["val_fitness"] > 0.8  # PU AUC of labelled vs unlabelled validation points
    nnpu = train_pu(PUConfig(loss="nnpu", epochs=1))
    assert nnpu["prior_used"] == pytest.approx(2 / 15, abs=0.01)  # benchmark mode: the truth's positive share


@pytest.mark.parametrize("method", BASELINES)
def test_every_baseline_runs_and_beats_chance(method, small):
    train, test = small
    result = train_pu(PUConfig(loss=method, epochs=8, labelled_frac=0.3), train, test)
    assert result["status"] == "ok", method
    assert result["test_auc"] > 0.7, method
    assert (result["prior_used"] is not None) == (method in ("upu", "nnpu"))


def test_same_seed_same_result(small):
    train, test = small
    a, b = (train_pu(PUConfig(loss="pan", epochs=3, seed=4), train, test) for _ in range(2))
    c = train_pu(PUConfig(loss="pan", epochs=3, seed=5), train, test)
    assert a["test_auc"] == b["test_auc"] and a["val_fitness"] == b["val_fitness"]
    assert a["threshold"] == b["threshold"]
    assert c["val_fitness"] != a["val_fitness"]


def test_a_packed_population_matches_members_trained_alone(small):
    train, _ = small
    cfg = PUConfig(epochs=2, hidden=32)
    split = make_pu_split(train, 0.2, seed=0)
    g = torch.Generator().manual_seed(1)
    losses = [TaylorLoss.from_function(pan_probability_losses, 2)] + [
        TaylorLoss(2, (torch.randn(num_coefficients(2), generator=g)).tolist()) for _ in range(2)
    ]
    members = [(loss, seed) for loss in losses for seed in (0, 1)]
    data = TrainTensors.from_split(split, "taylor")
    packed = build_population(Objective.taylor([m[0] for m in members]), [m[1] for m in members], split.dim, cfg)
    for _ in range(cfg.epochs):
        train_epoch(packed, data, cfg)
    packed_fitness = [m.fitness for m in evaluate_members(packed, ValidationSets.from_split(split), "pu_auc", None)]
    for i, (loss, seed) in enumerate(members):
        alone = build_population(Objective.taylor([loss]), [seed], split.dim, cfg)
        for _ in range(cfg.epochs):
            train_epoch(alone, data, cfg)
        (solo,) = evaluate_members(alone, ValidationSets.from_split(split), "pu_auc", None)
        assert solo.fitness == pytest.approx(packed_fitness[i], abs=1e-3)
        torch.testing.assert_close(alone.selector.weights[0][0], packed.selector.weights[0][i], atol=1e-4, rtol=1e-3)


def test_a_diverging_member_is_marked_and_does_not_disturb_the_others(small):
    train, _ = small
    cfg = PUConfig(epochs=1, hidden=16)
    split = make_pu_split(train, 0.2, seed=0)
    good = TaylorLoss.from_function(pan_probability_losses, 2)
    objective = Objective.taylor([good, good])
    objective.taylor_coefficients[1] = float("nan")  # what a wild candidate can produce
    pop = build_population(objective, [0, 0], split.dim, cfg)
    train_epoch(pop, TrainTensors.from_split(split, "taylor"), cfg)
    ok, bad = evaluate_members(pop, ValidationSets.from_split(split), "pu_auc", None)
    assert bad.status == "diverged" and np.isnan(bad.fitness)
    assert ok.status == "ok" and np.isfinite(ok.fitness)
    alone = build_population(Objective.taylor([good]), [0], split.dim, cfg)
    train_epoch(alone, TrainTensors.from_split(split, "taylor"), cfg)
    assert evaluate_members(alone, ValidationSets.from_split(split), "pu_auc", None)[0].fitness == pytest.approx(ok.fitness, abs=1e-3)


def test_cli_train_pu_writes_results_and_takes_a_loss_file(tmp_path, capsys):
    loss_file = tmp_path / "pan2.json"
    TaylorLoss.from_function(pan_probability_losses, 2, name="pan2").save(loss_file)
    out = tmp_path / "r.json"
    assert main(["train-pu", "--smoke-test", "--loss", str(loss_file), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("loss", "seed", "test_f1", "test_auc", "val_fitness", "threshold", "prior_used"):
        assert key in result
    assert result["loss"] == "pan2" and 0 < result["threshold"] < 1
    assert "test  f1" in capsys.readouterr().out


def test_cli_refuses_bad_options(tmp_path, capsys):
    assert main(["train-pu", "--loss", "nope", "--epochs", "1"]) == 2
    assert main(["train-pu", "--prior", "1.5", "--loss", "nnpu"]) == 2
    assert main(["train-pu", "--loss", str(tmp_path / "missing.json")]) == 2
    assert main(["train-pu", "--fitness", "pu_accuracy", "--loss", "naive", "--epochs", "1"]) == 0  # benchmark: true prior
    err = capsys.readouterr().err
    assert "unknown loss 'nope'" in err and "--prior" in err


@pytest.mark.parametrize("name", ["pu-taylor-v1", "pu-taylor-v2", "pu-taylor-v3"])
def test_the_zoo_losses_ship_and_train(name, capsys):
    from trainers.pu import resolve_loss, zoo_names

    assert name in zoo_names()
    loss = resolve_loss(f"zoo:{name}")
    assert isinstance(loss, TaylorLoss) and loss.name == name
    assert main(["train-pu", "--smoke-test", "--loss", f"zoo:{name}"]) == 0
    assert main(["train-pu", "--smoke-test", "--loss", "zoo:nope"]) == 2
    assert f"zoo:{name}" in capsys.readouterr().err
