"""Cross mode (the GPU recipe: a full cross-encoder over [prompt] [SEP] [a] [SEP] [b]) on tiny
random models, on the CPU: the input layout and its budget, learning, exact swap antisymmetry
through ``score-pairs``, serving equal to the training-side scores, resume inside an epoch,
and the real ``train-dpo --mode cross`` as a two-worker data-parallel Ray Train job."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from pairs_helpers import score_pairs_both_orders

from trainers.config import DPOConfig
from trainers.cross import build_cross_model, save_cross_scorer
from trainers.data.pairs import synthetic_pairs
from trainers.losses.preference import resolve_preference_loss
from trainers.models.cross import pair_sequences, split_budget
from trainers.models.pair import prob_from_logit
from trainers.models.preference import word_tokenizer
from trainers.pair import PairRun, PairTexts, pair_logits, prepare_pair, run_pair_epochs
from trainers.scorer import CrossScorer, PreferenceScorer


def tiny_cfg(**kw) -> DPOConfig:
    base = dict(mode="cross", max_length=48, max_prompt_length=8, max_pairs=1500, epochs=3, lr=1e-3, batch_size=8)
    return DPOConfig(**{**base, **kw})


def test_the_prompt_keeps_its_end_and_a_short_answer_leaves_its_share_to_the_other():
    assert split_budget(10, 3, 20) == (3, 7) and split_budget(10, 20, 3) == (7, 3) and split_budget(10, 20, 20) == (5, 5)
    tokenizer = word_tokenizer([f"w{i}" for i in range(40)])
    model = build_cross_model(DPOConfig(mode="cross", max_length=16, max_prompt_length=3), None, None)
    model.tokenizer = tokenizer
    cfg = DPOConfig(mode="cross", max_length=16, max_prompt_length=3)
    prompt = model.token_ids(["w1 w2 w3 w4 w5"], cfg.max_prompt_length, last=True)
    assert tokenizer.convert_ids_to_tokens(prompt[0]) == ["w3", "w4", "w5"]
    a = model.token_ids(["w10 w11"], 99)
    b = model.token_ids([" ".join(f"w{i}" for i in range(20, 40))], 99)
    ids, attention, types = pair_sequences(tokenizer, prompt, a, b, cfg.max_length)
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    # 16 = [CLS] + 3 prompt + [SEP] + 2 of a + [SEP] + 7 of b (a's unused share) + [SEP]
    assert tokens == ["[CLS]", "w3", "w4", "w5", "[SEP]", "w10", "w11", "[SEP]", *[f"w{i}" for i in range(20, 27)], "[SEP]"]
    assert types[0].tolist() == [0] * 5 + [1] * 11 and attention.sum() == 16


def test_a_cross_encoder_learns_and_score_pairs_swaps_exactly(tmp_path, capsys):
    torch.set_num_threads(1)
    cfg = tiny_cfg()
    prep = prepare_pair(cfg, synthetic_pairs(1500), "cpu", build=build_cross_model)
    assert prep.cache is None and prep.cache_stats["computed"] == 0
    run = PairRun.start(prep.model.judge, cfg)
    run_pair_epochs(run, prep, resolve_preference_loss(cfg.loss), cfg, "cpu")
    assert run.best_agreement > 0.7, run.history  # chance is 0.5; the rule needs the prompt's topic
    save_cross_scorer(tmp_path / "scorer", cfg, run.best_state, {"loss": "dpo", "reward_scale": 1.0, "beta": 1.0})
    scorer = PreferenceScorer.load(tmp_path / "scorer", batch_size=16)
    assert isinstance(scorer, CrossScorer)

    test = synthetic_pairs(100, seed=99)
    p, q = score_pairs_both_orders(tmp_path / "scorer", test, tmp_path)
    assert np.array_equal(q, 1.0 - p) and len(np.unique(p)) > 10
    assert "agreement with the labels" in capsys.readouterr().out
    # The saved and reloaded scorer gives the training side's scores.
    data = PairTexts.build(test, prep.model.tokenizer, prep.model.text_budget(cfg))
    prep.model.judge.load_state_dict(run.best_state)
    np.testing.assert_allclose(prob_from_logit(pair_logits(prep.model, None, data, cfg, "cpu")), p, atol=1e-5)


def test_cross_training_killed_mid_epoch_resumes_to_the_same_weights():
    torch.set_num_threads(1)
    cfg = tiny_cfg(epochs=1, max_pairs=400)
    loss = resolve_preference_loss(cfg.loss)
    every_step = replace(cfg, checkpoint_minutes=0.0)

    def fresh():
        prep = prepare_pair(cfg, synthetic_pairs(400), "cpu", build=build_cross_model)
        return prep, PairRun.start(prep.model.judge, cfg)

    whole, straight = fresh()
    run_pair_epochs(straight, whole, loss, every_step, "cpu")

    class Killed(Exception):
        pass

    saved = []

    def checkpoint(run):
        saved.append(copy.deepcopy(run.state_dict()))
        if run.step == 5:
            raise Killed

    first, interrupted = fresh()
    with pytest.raises(Killed):
        run_pair_epochs(interrupted, first, loss, every_step, "cpu", checkpoint=checkpoint)
    second, resumed = fresh()
    resumed.load_state_dict(saved[-1])
    assert (resumed.epoch, resumed.step) == (0, 5)
    run_pair_epochs(resumed, second, loss, every_step, "cpu")
    for (name, a), (_, b) in zip(straight.judge.state_dict().items(), resumed.judge.state_dict().items()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


@pytest.mark.slow
def test_train_dpo_cross_with_two_data_parallel_workers_saves_a_scorer(tmp_path, local_ray):
    from search.jobs.train_dpo import run_train_dpo
    from search.session.ray_session import Scaling

    lines = []
    metrics = run_train_dpo(tiny_cfg(epochs=1, max_pairs=600), None, None, str(tmp_path / "cross"),
                            Scaling(workers=2, cpus_per_worker=1), log=lines.append)
    assert metrics["workers"] == 2 and metrics["config"]["mode"] == "cross"
    assert [h["replicas_in_sync"] for h in metrics["history"]] == [True] and metrics["replicas_in_sync"]
    assert metrics["test"]["agreement"] > 0.5, metrics["test"]
    scorer = PreferenceScorer.load(tmp_path / "cross" / "scorer")
    test = synthetic_pairs(30, seed=5)
    p = scorer.prob_a_better(test.prompt, test.a, test.b)
    assert isinstance(scorer, CrossScorer) and np.array_equal(scorer.prob_a_better(test.prompt, test.b, test.a), 1.0 - p)
