"""DPO data, token ids, models, learning and serving, without Ray."""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from search.cli import main
from trainers.data.pairs import read_pairs, split_by_prompt, synthetic_pairs, synthetic_vocabulary
from trainers.data.shards import DataError
from trainers.dpo import DPOConfig, build_model, cache_reference, encode_pairs, save_scorer, train_dpo, values
from trainers.models.preference import CompletionLogProb, encode_texts, tiny_backbone, word_tokenizer
from trainers.scorer import PreferenceScorer

SHARED_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pairs"


def write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- data -------------------------------------------------------------------------------------


def test_both_forms_from_parquet_and_jsonl(tmp_path):
    pq.write_table(pa.table({"prompt": ["q1", "q2"], "chosen": ["good", "fine"], "rejected": ["bad", "poor"]}),
                   tmp_path / "c.parquet")
    pairs = read_pairs(tmp_path / "c.parquet")
    assert pairs.a == ["good", "fine"] and pairs.b == ["bad", "poor"] and pairs.p.tolist() == [1.0, 1.0]
    write_jsonl(tmp_path / "ab.jsonl", [
        {"instruction": "q", "output_a": "x", "output_b": "yy", "label": 0},
        {"instruction": "r", "output_a": "z", "output_b": "w", "label": 1}])
    ab = read_pairs(tmp_path / "ab.jsonl")
    assert ab.p.tolist() == [0.0, 1.0] and not ab.soft
    write_jsonl(tmp_path / "soft.jsonl", [{"prompt": "q", "output_a": "x", "output_b": "y", "p_a": 0.8, "label": 1}])
    soft = read_pairs(tmp_path / "soft.jsonl")
    assert soft.p.tolist() == pytest.approx([0.8]) and soft.soft  # p_a wins over label
    # HH-style: no prompt column, the dialogue carries it
    write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "Human: hi Assistant: hello", "rejected": "Human: hi Assistant: go"}])
    assert read_pairs(tmp_path / "hh.jsonl").prompt == [""]


@pytest.mark.parametrize("rows, column, message", [
    ([{"prompt": "q", "chosen": "a"}], "rejected", "not preference pairs"),
    ([{"instruction": "q", "output_a": "a", "output_b": "b"}], "label", "need 'label'"),
    ([{"output_a": "a", "output_b": "b", "label": 1}], "instruction", "need 'instruction' or 'prompt'"),
    ([{"prompt": "q", "chosen": "a", "rejected": " "}], "rejected", "no text"),
    ([{"prompt": "q", "chosen": None, "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": "b"}], "chosen", "no text"),
    ([{"prompt": "q", "output_a": "a", "output_b": "b", "label": 2}], "label", r"in \[0, 1\]"),
    ([{"prompt": "q", "output_a": "a", "output_b": "b", "p_a": -0.1}], "p_a", r"in \[0, 1\]"),
    ([{"prompt": "q", "output_a": "a", "output_b": "b", "label": None}, {"prompt": "q", "output_a": "a", "output_b": "b", "label": 1}], "label", "null"),
    ([{"prompt": "q", "output_a": "a", "output_b": "b", "label": "yes"}], "label", "numbers"),
])
def test_data_errors_name_file_and_column(tmp_path, rows, column, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message) as err:
        read_pairs(path)
    assert err.value.column == column and str(path) in str(err.value)


def test_unreadable_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown file type"):
        read_pairs(tmp_path / "x.txt")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "chosen": pa.array([], pa.string()),
                             "rejected": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="no rows"):
        read_pairs(tmp_path / "empty.parquet")


def test_train_dpo_cli_bad_data_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "output_a": "a", "output_b": "b", "label": 3}])
    out = tmp_path / "run"
    assert main(["train-dpo", "--train", str(bad), "--out", str(out)]) == 2
    assert "label" in capsys.readouterr().err and not out.exists()
    assert main(["train-dpo", "--loss", "kto", "--out", str(out)]) == 2
    assert "unknown loss" in capsys.readouterr().err and not out.exists()


def test_split_by_prompt_is_deterministic_and_disjoint():
    pairs = synthetic_pairs(800, seed=3)
    train, val = split_by_prompt(pairs, 0.2, seed=5)
    again_train, again_val = split_by_prompt(pairs, 0.2, seed=5)
    assert train.prompt == again_train.prompt and val.a == again_val.a
    assert not set(train.prompt) & set(val.prompt) and len(train) + len(val) == len(pairs)
    assert split_by_prompt(pairs, 0.2, seed=6)[1].prompt != val.prompt


def test_synthetic_task_is_seeded_and_not_about_length():
    a, b = synthetic_pairs(500, seed=1), synthetic_pairs(500, seed=1)
    assert a.a == b.a and np.array_equal(a.p, b.p)
    longer_wins = np.mean([(len(x) > len(y)) == (p > 0.5) for x, y, p in zip(a.a, a.b, a.p)])
    assert 0.4 < longer_wins < 0.75


# -- token ids and models ---------------------------------------------------------------------


def test_truncation_keeps_the_end_of_the_prompt_and_the_start_of_the_response():
    tok = word_tokenizer(["p1", "p2", "p3", "p4", "r1", "r2", "r3", "r4", "r5"])
    enc = encode_texts(tok, ["p1 p2 p3 p4", "p1"], ["r1 r2 r3 r4 r5", "r1"], "encoder", max_length=8, max_prompt_length=2)
    assert len(enc) == 2 and enc.truncated == 1  # truncated, not dropped
    first = tok.convert_ids_to_tokens(enc.ids[0][enc.attention[0].bool()].tolist())
    assert first == ["[CLS]", "p3", "p4", "[SEP]", "r1", "r2", "r3", "[SEP]"]
    causal = encode_texts(tok, ["p1 p2 p3 p4"], ["r1 r2 r3 r4 r5"], "causal", max_length=8, max_prompt_length=2)
    tokens = tok.convert_ids_to_tokens(causal.ids[0].tolist())
    assert tokens == ["[BOS]", "p3", "p4", "r1", "r2", "r3", "r4", "[EOS]"]
    assert causal.scored[0].tolist() == [False, False, False, True, True, True, True, True]
    with pytest.raises(ValueError, match="max_length"):
        encode_texts(tok, ["p1"], ["r1"], "encoder", max_length=5, max_prompt_length=4)


def test_causal_log_prob_sums_only_the_response_tokens():
    tok = word_tokenizer(synthetic_vocabulary())
    lm = tiny_backbone("causal", len(tok), seed=0).eval()
    model = CompletionLogProb(lm)
    enc = encode_texts(tok, ["list some fruit", "name a few tool please"], ["apple pear", "saw"], "causal", 32, 16)
    with torch.no_grad():
        got = model(enc.ids, enc.attention, enc.scored)
        logits = lm(input_ids=enc.ids, attention_mask=enc.attention).logits.log_softmax(-1)
    for row in range(2):
        n_prompt = 1 + len(tok(["list some fruit", "name a few tool please"][row], add_special_tokens=False)["input_ids"])
        n_total = int(enc.attention[row].sum())
        by_hand = sum(logits[row, t - 1, enc.ids[row, t]].item() for t in range(n_prompt, n_total))
        assert got[row].item() == pytest.approx(by_hand, abs=1e-4)
    # a different prompt changes the conditioning, never which tokens are counted
    assert enc.scored[0].sum().item() == 3 and enc.scored[1].sum().item() == 2


@pytest.mark.parametrize("mode", ["encoder", "causal"])
def test_untrained_policy_equals_its_reference(mode):
    cfg = DPOConfig(mode=mode)
    model, tok, _ = build_model(cfg)
    data = encode_pairs(tok, synthetic_pairs(40, seed=2), cfg)
    cache_reference(model, data, cfg, "cpu")
    assert torch.equal(values(model, data.a, 16, "cpu"), data.reference_a)
    assert torch.equal(values(model, data.b, 16, "cpu"), data.reference_b)
    if mode == "encoder":  # zero-initialised head: the reference scores every response 0
        assert torch.count_nonzero(data.reference_a) == 0
    else:
        assert (data.reference_a < 0).all()  # log-probs


@pytest.mark.parametrize("mode, loss", [("encoder", "dpo"), ("causal", "dpo"), ("encoder", "bt")])
def test_tiny_model_learns_the_default_task_above_chance(mode, loss):
    cfg = DPOConfig(mode=mode, loss=loss, epochs=2, max_pairs=1500)
    result = train_dpo(cfg)
    assert result["status"] == "ok"
    assert result["test"]["agreement"] > 0.7, result["history"]
    assert result["test"]["pairs"] == 1000 and "brier" in result["test"]


def test_every_loss_trains_one_epoch_to_a_finite_loss_and_agreement():
    from trainers.losses.preference import PREFERENCE_LOSSES

    assert {"dpo", "bt"} <= set(PREFERENCE_LOSSES)
    for loss in PREFERENCE_LOSSES:
        result = train_dpo(DPOConfig(loss=loss, epochs=1, max_pairs=300), test=None)
        assert result["status"] == "ok" and np.isfinite(result["history"][0]["train_loss"]), loss
        assert np.isfinite(result["val_agreement"]), loss


def test_the_zoo_preference_loss_ships_trains_and_is_refused_by_the_other_task(capsys):
    """zoo:pref-taylor-v1 (a searched preference loss) trains like a named loss; each task's zoo
    holds only its own family, and asking one for the other's is one line, exit 2."""
    from trainers.losses.preference import resolve_preference_loss
    from trainers.errors import UsageError
    from trainers.losses.preference_taylor import PreferenceTaylorLoss

    loss = resolve_preference_loss("zoo:pref-taylor-v1")
    assert isinstance(loss, PreferenceTaylorLoss) and loss.name == "pref-taylor-v1"
    result = train_dpo(DPOConfig(loss="zoo:pref-taylor-v1", epochs=1, max_pairs=300), test=None)
    assert result["status"] == "ok" and np.isfinite(result["val_agreement"])
    assert main(["train-pu", "--loss", "zoo:pref-taylor-v1", "--epochs", "1"]) == 2
    assert "no loss 'zoo:pref-taylor-v1' in the zoo for this task" in capsys.readouterr().err
    with pytest.raises(UsageError, match="it has \\['zoo:pref-taylor-v1'\\]"):
        resolve_preference_loss("zoo:pu-taylor-v2")


def test_a_run_that_goes_non_finite_after_a_good_epoch_is_diverged_as_in_a_search_pack():
    """One definition of "diverged": train_dpo does not call a run ok because an earlier epoch
    was good (a search pack scores the same run -1000)."""
    from search.engine.space import PreferenceTaylorSpace
    from trainers.dpo import diverged, taylor_pair_loss

    space = PreferenceTaylorSpace(order=2)
    candidate = space.candidate(space.seed_point("dpo"))
    base, broken = taylor_pair_loss(candidate["coefficients"], candidate["center"]), [False]

    def loss(delta, p):
        value = base(delta, p)
        return value * float("nan") if broken[0] else value

    def log(message):
        broken[0] = broken[0] or message.startswith("epoch 1/")

    result = train_dpo(DPOConfig(epochs=3, max_pairs=300), test=None, loss=loss, log=log)
    assert result["history"][0]["status"] == "ok" and not np.isfinite(result["history"][1]["train_loss"])
    assert result["status"] == "diverged" and len(result["history"]) == 2
    assert diverged({"w": 0}, result["history"]) and not diverged({"w": 0}, result["history"][:1])


# -- serving ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_scorer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scorer")
    cfg = DPOConfig(epochs=2, max_pairs=1500)
    result = train_dpo(cfg)
    save_scorer(folder, cfg, result["model"].state_dict(), cfg.loss)
    return folder, result


def test_saved_scorer_reproduces_the_trained_model_and_ranks_with_n_scorings(trained_scorer):
    folder, result = trained_scorer
    scorer = PreferenceScorer.load(folder)
    test = synthetic_pairs(1000, seed=10_000)
    prob, pairs_per_second = scorer.score_pairs(test)
    agreement = np.mean((prob > 0.5) == (test.p > 0.5))
    assert agreement == pytest.approx(result["test"]["agreement"], abs=1e-9) and pairs_per_second > 0
    # ranking: one forward row per candidate
    rows = []
    forward = scorer.model.forward
    scorer.model.forward = lambda ids, *rest: rows.append(len(ids)) or forward(ids, *rest)
    order = scorer.rank("list some fruit please", ["tiger saw red", "apple pear plum mango", "apple tiger red"])
    assert sum(rows) == 3
    assert order[0] == 1 and order[-1] == 0


def test_score_pairs_cli_writes_every_row_with_its_probability(trained_scorer, tmp_path, capsys):
    folder, _ = trained_scorer
    data = write_jsonl(tmp_path / "in.jsonl", [
        # answers of the training pairs' lengths (5-10 words), 5 on-topic words against 0: the judge's p is 0.9995
        {"prompt": "list some fruit please", "output_a": "apple pear plum mango peach the", "output_b": "saw red tiger the some also", "id": 7},
        {"prompt": "name a few tool quickly", "output_a": "apple pear red tiger the some", "output_b": "hammer saw drill wrench pliers the", "id": 8}])
    out = tmp_path / "scored.parquet"
    assert main(["score-pairs", "--model", str(folder), "--data", str(data), "--out", str(out)]) == 0
    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table] == [7, 8]
    assert table[0]["p_a_model"] > 0.5 > table[1]["p_a_model"]
    assert "scored 2 pairs" in capsys.readouterr().out
    assert main(["score-pairs", "--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "x.parquet")]) == 2
    assert not (tmp_path / "x.parquet").exists()


def test_alpaca_eval_pairs_read_when_present():
    if not (SHARED_PAIRS / "alpaca_eval" / "test.parquet").exists():
        pytest.skip("../shared/data is absent (a user's clone has none)")
    pairs = read_pairs(SHARED_PAIRS / "alpaca_eval" / "test.parquet")
    assert len(pairs) == 8139 and set(np.unique(pairs.p)) == {0.0, 1.0}
    assert 0.1 < pairs.length_controlled().mean() < 0.3


def test_dpo_reevaluation_fitness_is_the_mean_paired_margin_over_the_best_control_on_each_seed():
    """What the DPO re-evaluation tells: per seed, agreement minus the best control trained on that
    seed; a diverged control leaves the others (all diverged: chance, 0.5); a candidate diverged
    on any seed is diverged; one with a seed still to train has no result yet."""
    from trainers.boundary import DIVERGED_FITNESS
    from trainers.config import DPOConfig
    from trainers.dpo import DPOPackPlan
    from trainers.loop import dpo_results

    point = {"order": 1, "coefficients": [-1.0], "center": 0.5}
    plan = DPOPackPlan(None, DPOConfig(), controls=[{"name": "dpo", **point}, {"name": "brier", **point}], seeds=[7, 8])
    candidates = [{"id": i, **point} for i in range(4)]
    agreements = {"7/control:dpo": 0.70, "7/control:brier": 0.72, "8/control:dpo": None, "8/control:brier": None,
                  "7/0": 0.75, "8/0": 0.55, "7/1": 0.80, "8/1": None, "7/2": 0.71}
    results = {r.id: r for r in dpo_results(plan, candidates, agreements)}
    assert set(results) == {0, 1}  # 2 and 3 have a seed left to train
    assert results[0].status == "ok" and results[0].details["margins"] == pytest.approx([0.03, 0.05])
    assert results[0].fitness == pytest.approx(0.04) and results[0].details["sd"] == pytest.approx([np.std([0.03, 0.05], ddof=1)])
    assert results[1].status == "diverged" and results[1].fitness == DIVERGED_FITNESS
    # a search pack (no re-evaluation seeds): the fitness is the agreement on the search's seed
    search = DPOPackPlan(None, DPOConfig(seed=7), controls=plan.controls)
    assert [(r.id, r.fitness) for r in dpo_results(search, candidates[:1], {"7/0": 0.75})] == [(0, 0.75)]
    # the stage's seeds come from a range the search never trains on
    stage = search.for_reevaluation(type("O", (), {"reevaluation_seeds": 3})(), epochs=1)
    assert len(stage.seeds) == 3 == stage.members_per_unit and 7 not in stage.seeds
