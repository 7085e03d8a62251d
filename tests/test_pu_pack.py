"""The PU search pack, in-process: folds, paired controls, successive halving, re-evaluation
streams, rejection and exact resume -- the mechanisms behind an honest fitness."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import write_embeddings

from trainers.boundary import DIVERGED_FITNESS
from trainers.checkpoints import load_state, save_state
from trainers.config import PUConfig
from trainers.data.pu import PUData, split_entropy
from trainers.data.synthetic import SyntheticSpec, synthetic_pu_problem
from trainers.losses.seeds import taylor_point
from trainers.losses.taylor import exponents, num_coefficients
from trainers.pu import Objective, TrainTensors, build_population, selector_scores, train_epoch
from trainers.pu_pack import (
    REEVALUATION_STREAM, SEARCH_STREAM, PackState, PUPackPlan, load_dataset, run_pack, selector_can_rank,
)

CFG = PUConfig(epochs=3, hidden=16, batch_size=128)


def candidate(name_or_vector, cid, order=2):
    if isinstance(name_or_vector, str):
        loss = taylor_point(name_or_vector, order)
        return {"id": cid, "name": name_or_vector, "order": order, "coefficients": loss.coefficients, "center": list(loss.center)}
    w = list(name_or_vector)
    return {"id": cid, "order": order, "coefficients": w, "center": [0.5] * 4}


def random_candidates(n, seed=0, start=0):
    rng = np.random.default_rng(seed)
    return [candidate(rng.uniform(-3, 3, num_coefficients(2)), start + i) for i in range(n)]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small built-in problem as a Parquet file (the packs read their data by path)."""
    table, _ = synthetic_pu_problem(SyntheticSpec(n_train=1200, n_test=10))
    return str(write_embeddings(tmp_path_factory.mktemp("pu") / "small.parquet", table.x, label=table.label))


@pytest.fixture(scope="module")
def plan(small):
    return PUPackPlan(datasets=[small], labelled_frac=0.2, seed=0, pu=CFG, priors=[None], folds=2,
                      controls=[candidate("pan", -1), candidate("naive", -2)], rungs=[1, 2, 3], keep=0.5)


def test_folds_differ_between_packs_and_from_the_reevaluation_folds(small):
    data = load_dataset(small, replace(CFG, labelled_frac=0.2, seed=0))
    folds = {key: data.fold(0.2, split_entropy(0, *key)) for key in
             [(SEARCH_STREAM, 0, 0), (SEARCH_STREAM, 0, 1), (SEARCH_STREAM, 1, 0), (REEVALUATION_STREAM, 0, 0)]}
    vals = {k: set(f.val.tolist()) for k, f in folds.items()}
    assert len({frozenset(v) for v in vals.values()}) == 4  # every (stream, pack, fold) its own split
    again = data.fold(0.2, split_entropy(0, SEARCH_STREAM, 0, 0))
    assert set(again.val.tolist()) == vals[(SEARCH_STREAM, 0, 0)]  # and the same seed gives the same one
    for f in folds.values():  # stratified: the labelled share of validation and training match
        train = np.r_[f.train_positive, f.train_unlabelled]
        assert abs(f.val_labelled.mean() - data.labelled[train].mean()) < 0.02
    reevaluation = replace(PUPackPlan([None], 0.2, 0, CFG), stream=REEVALUATION_STREAM)
    assert not {s for _, s in reevaluation.member_seeds()} & {s for _, s in PUPackPlan([None], 0.2, 0, CFG).member_seeds()}


def test_a_candidate_identical_to_the_best_control_has_a_margin_of_exactly_zero(plan):
    one_rung = replace(plan, rungs=[2])
    state = run_pack(one_rung, 0, [candidate("pan", 0), candidate("naive", 1)])
    margins = {i: r.details["margin"][0] for i, r in state.results.items()}
    # Same folds, seeds, initial weights and batches as the controls: the paired difference
    # with the best control is exactly 0 for its twin, and the other twin is below it.
    assert max(margins.values()) == 0.0 and min(margins.values()) < 0.0
    best_twin = max(margins, key=margins.get)
    assert state.results[best_twin].details["sd"][0] == 0.0
    control = state.results[best_twin].details["control"][0]
    assert state.results[best_twin].details["metric"][0] == pytest.approx(control)


def test_an_exact_control_member_trains_as_that_loss_alone_and_its_taylor_point_is_another_loss(plan):
    """A control with ``"exact"`` trains the hand-made loss itself inside the Taylor population:
    the same selector as a population of that loss alone (same seed, batches, initial weights),
    so a candidate at its Taylor point is compared with the real loss, not with itself."""
    table, _ = synthetic_pu_problem(SyntheticSpec(n_train=1200, n_test=10))
    data = PUData.from_table(table, 0.2, 0)
    tensors = TrainTensors.from_folds(data, [data.fold(0.2, split_entropy(0, 1, 0, 0))], "taylor")
    rows = [dict(candidate("pan", 0), exact="pan"), dict(candidate("naive", 1), exact="naive"), candidate("naive", 2),
            dict(candidate("upu", 3), exact="nnpu")]
    cfg = replace(CFG, lr=1e-2)
    mixed = build_population(Objective.taylor_candidates(rows, prior=0.4), [7] * 4, data.dim, cfg)
    alone = [build_population(Objective(m, prior=0.4), [7], data.dim, cfg) for m in ("pan", "naive", "nnpu")]
    for _ in range(3):
        for pop in [mixed, *alone]:
            train_epoch(pop, tensors, cfg)
    scores = selector_scores(mixed, data.x[:300])
    for k, pop in zip((0, 1, 3), alone):
        np.testing.assert_allclose(scores[k], selector_scores(pop, data.x[:300])[0], atol=1e-4)
    assert np.abs(scores[2] - scores[1]).max() > 1e-2, "naive's Taylor point trains otherwise (100x the tolerance)"
    mixed.select([3, 1])  # halving compacts exact members like any other
    assert mixed.objective.exact == ["nnpu", "naive"]
    with pytest.raises(ValueError, match="upu/nnpu without a prior"):
        Objective.taylor_candidates(rows)

    # In a pack: with Taylor controls naive's point is the naive control's twin (margin exactly 0);
    # with exact controls it is another loss, beside the real one
    auc_plan = replace(plan, pu=replace(cfg, fitness="pu_auc"), rungs=[2])
    exact_plan = replace(auc_plan, controls=[dict(c, exact=c["name"]) for c in plan.controls], priors=[0.4])
    margins = [[r.details["margin"][0] for _, r in sorted(run_pack(p, 0, [candidate("pan", 0), candidate("naive", 1)])
                                                               .results.items())] for p in (auc_plan, exact_plan)]
    assert margins[0][1] == 0.0 and all(m != 0.0 for m in margins[1]), margins
    # an exact control re-evaluated as an elite trains even where its Taylor point could not rank (order 1's PAN)
    flat = dict(candidate([0.0] * num_coefficients(2), 5), exact="naive")
    assert not selector_can_rank(flat) and run_pack(exact_plan, 0, [flat]).results[5].status == "ok"


def test_halving_keeps_the_best_share_and_tells_every_candidate(plan):
    candidates = random_candidates(6) + [candidate("naive", 6)]
    seen = []
    state = run_pack(plan, 3, candidates, on_rung=lambda s, n: seen.append((s.rung, list(s.alive), dict(s.results))))
    assert sorted(state.results) == list(range(7)) and state.finished
    (_, alive1, results1), (_, alive2, _), (_, alive3, _) = seen
    ranked = sorted((r for r in results1.values() if r.status == "ok"), key=lambda r: -r.fitness)
    assert alive1 == [r.id for r in ranked[: int(np.ceil(0.5 * len(ranked)))]]  # the top half trains on
    assert len(alive2) == int(np.ceil(0.5 * len(alive1))) and alive3 == []
    for r in state.results.values():  # dropped candidates keep the result of the rung they reached
        expected_rung = 0 if r.id not in alive1 else 1 if r.id not in alive2 else 2
        assert r.status != "ok" or r.details["rung"] == expected_rung
        assert r.status != "ok" or r.details["epochs"] == plan.rungs[r.details["rung"]]


def test_compacting_a_population_keeps_each_members_training_exact():
    table, _ = synthetic_pu_problem(SyntheticSpec(n_train=800, n_test=10))
    data = PUData.from_table(table, 0.3, 0)
    folds = [data.fold(0.2, split_entropy(0, 1, 0, f)) for f in range(2)]
    losses = [taylor_point(n, 2) for n in ("pan", "naive", "pan")]

    def population():
        return build_population(Objective.taylor(losses), [5, 6, 7], data.dim, CFG, member_fold=[0, 1, 0])

    tensors = TrainTensors.from_folds(data, folds, "taylor")
    full, cut = population(), population()
    for pop in (full, cut):
        train_epoch(pop, tensors, CFG)
    cut.select([2, 0])
    for pop in (full, cut):
        train_epoch(pop, tensors, CFG)
    for w_full, w_cut in zip(full.selector.weights, cut.selector.weights):
        torch.testing.assert_close(w_cut, w_full[[2, 0]])
    assert cut.seeds == [7, 5] and cut.member_fold.tolist() == [0, 0]


def test_a_selector_that_cannot_rank_is_rejected_before_training(plan):
    names = exponents(2, "selector")
    only_cu2 = np.zeros(num_coefficients(2))
    only_cu2[len(exponents(2, "discriminator")) + names.index((0, 0, 0, 2))] = 1.0
    assert not selector_can_rank(candidate(only_cu2, 0))
    assert selector_can_rank(candidate("pan", 1)) and selector_can_rank(candidate("naive", 2))
    state = run_pack(replace(plan, rungs=[1]), 0, [candidate(only_cu2, 0), candidate("naive", 1)])
    assert state.results[0].status == "rejected" and state.results[0].fitness == DIVERGED_FITNESS
    assert state.results[1].status == "ok"


def test_a_pack_resumed_from_its_checkpoint_ends_exactly_where_an_uninterrupted_one_does(plan, tmp_path):
    candidates = random_candidates(4, seed=1)
    whole = run_pack(plan, 1, candidates)
    saved = []

    def checkpoint(state, rungs):  # what the Ray loop does: save_state, later load_state (weights only)
        if state.rung == 1:
            save_state({"pack_state": state.to_dict()}, tmp_path / f"state-{len(saved)}.pt")
            saved.append(tmp_path / f"state-{len(saved)}.pt")

    run_pack(plan, 1, candidates, on_rung=checkpoint)
    resumed = run_pack(plan, 1, candidates, state=PackState.from_dict(load_state(saved[0])["pack_state"]))
    assert {i: r.fitness for i, r in resumed.results.items()} == {i: r.fitness for i, r in whole.results.items()}


def test_several_data_sets_score_in_noise_units(plan):
    two = replace(plan, datasets=plan.datasets * 2, priors=[None, None], rungs=[2])
    state = run_pack(two, 0, random_candidates(3, seed=2))
    for r in state.results.values():
        if r.status == "ok":
            margins, scales = np.array(r.details["margin"]), np.array(r.details["scale"])
            assert len(margins) == 2 and (scales > 0).all() and (scales != 1.0).all()
            assert r.fitness == pytest.approx(np.mean(margins / scales))


def test_a_repeated_pack_resumes_its_checkpoint_only_when_it_holds_those_candidates():
    """A pack re-dispatched for the one candidate whose result never reached the log reports the
    result its finished checkpoint holds; an unfinished checkpoint of other members starts fresh."""
    from trainers.boundary import CandidateResult
    from trainers.loop import _pack_state

    results = {i: CandidateResult(i, 0.1 * i, "ok") for i in range(3)}
    finished = {"pack_state": PackState(rung=2, alive=[], results=dict(results)).to_dict()}
    assert _pack_state(finished, [0, 1, 2]) == PackState(rung=2, alive=[], results=dict(results))
    again = _pack_state(finished, [2])
    assert again.finished and list(again.results) == [2] and again.results[2].fitness == pytest.approx(0.2)
    midway = {"pack_state": PackState(rung=1, alive=[1, 2], results={0: results[0]}).to_dict()}
    assert _pack_state(midway, [0, 1, 2]) == PackState(rung=1, alive=[1, 2], results={0: results[0]})
    assert _pack_state(midway, [2]) is None  # other members' populations: start fresh
    assert _pack_state(None, [2]) is None


def test_a_dropped_candidate_is_told_its_margin_shifted_to_the_full_epochs(plan):
    state = run_pack(plan, 4, random_candidates(6, seed=3))
    ok = [r for r in state.results.values() if r.status == "ok"]
    histories = [r.details["history"] for r in ok]
    shifts = [float(np.median([h[j + 1] - h[j] for h in histories if len(h) > j + 1])) for j in range(2)]
    for r in ok:
        reached = len(r.details["history"])
        assert r.details["raw_fitness"] == r.details["history"][-1]
        assert r.fitness == pytest.approx(r.details["raw_fitness"] + sum(shifts[reached - 1:]))
    finals = [r for r in ok if len(r.details["history"]) == 3]
    assert finals and all(r.details["shift"] == 0.0 for r in finals)  # full-epoch results are told as measured
