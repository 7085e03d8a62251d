"""Pair mode on tiny random models: the state cache (equal to the uncached forward, damaged
entries rebuilt, safe to kill), windows and truncation, exact swap antisymmetry, resume inside an
epoch, and the saved scorer through ``score-pairs``."""
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pairs_helpers import score_pairs_both_orders

from trainers.config import DPOConfig
from trainers.data.pairs import synthetic_pairs
from trainers.data.state_cache import StateCache
from trainers.losses.preference import resolve_preference_loss
from trainers.models.pair import SIDE_FEATURES, cpu_runs_bf16, prob_from_logit, text_windows, truncated_count
from trainers.models.preference import word_tokenizer
from trainers.pair import (
    PairRun,
    PairTexts,
    build_pair_model,
    encode_windows,
    fill_cache,
    load_full_backbone,
    open_cache,
    pair_logits,
    prepare_pair,
    run_pair_epochs,
    save_pair_scorer,
)
from trainers.scorer import PairScorer, PreferenceScorer

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(tmp_path, **kw) -> DPOConfig:
    base = dict(mode="pair", top_layers=1, window=6, max_windows=2, cache_dir=str(tmp_path / "cache"),
                cache_dtype="float32", quantize_lower=False, bf16=False, max_pairs=300, epochs=1, lr=1e-3, batch_size=8)
    return DPOConfig(**{**base, **kw})


def test_windows_and_truncation_counts():
    tokenizer = word_tokenizer([f"w{i}" for i in range(30)])
    texts = [" ".join(f"w{i}" for i in range(n)) for n in (3, 6, 7, 12, 13, 25)]
    windows, counts = text_windows(tokenizer, texts, window=6, max_windows=2)
    assert counts.tolist() == [3, 6, 7, 12, 13, 25]
    assert [len(w) for w in windows] == [1, 1, 2, 2, 2, 2]
    assert [len(x) for x in windows[2]] == [8, 3]  # [CLS] 6 tokens [SEP], [CLS] 1 token [SEP]
    assert all(x[0] == tokenizer.cls_token_id and x[-1] == tokenizer.sep_token_id for w in windows for x in w)
    assert truncated_count(counts, 6 * 2) == 2  # 13 and 25 tokens lose some; 12 fits exactly


def test_split_encoder_matches_the_whole_model(tmp_path):
    """Top layers over lower-layer states == the unsplit Hugging Face model, mean-pooled."""
    cfg = tiny_cfg(tmp_path)
    full, tokenizer = load_full_backbone(cfg)
    full.eval()
    model = build_pair_model(cfg)
    model.judge.eval()
    texts = [p for p in synthetic_pairs(20).a[:6]]
    windows, _ = text_windows(tokenizer, texts, cfg.window, cfg.max_windows)
    from trainers.pair import encode_raw
    from trainers.models.pair import pad_windows

    h = encode_raw(model, texts, cfg, "cpu")
    for i, ws in enumerate(windows):
        ids, attention = pad_windows(ws, tokenizer.pad_token_id)
        with torch.no_grad():
            hidden = full(input_ids=ids, attention_mask=attention).last_hidden_state
        mask = attention[:, :, None].float()
        torch.testing.assert_close(h[i], (hidden * mask).sum((0, 1)) / mask.sum(), atol=1e-5, rtol=1e-5)


def test_bf16_autocast_only_where_the_cpu_runs_it_and_close_to_float32(tmp_path):
    """--bf16 (the default) applies only on a CPU with native bfloat16: emulated, it made pair-mode
    training ~30x slower. Where it applies, the top layers agree with float32 within bfloat16's
    precision (forced on here, whatever this CPU has)."""
    model = build_pair_model(tiny_cfg(tmp_path, bf16=True))
    assert model.judge.bf16 == cpu_runs_bf16()
    assert build_pair_model(tiny_cfg(tmp_path, bf16=False)).judge.bf16 is False
    hidden = (model.judge.head[0].in_features - 3 * len(SIDE_FEATURES) - 1) // 4
    states, lengths = torch.randn(5, 8, hidden), torch.tensor([8, 3, 5, 1, 8])
    owner = torch.tensor([0, 0, 1, 2, 2])
    model.judge.eval()
    model.judge.bf16 = False
    exact = model.judge.encode(states, lengths, owner, 3)
    model.judge.bf16 = True
    torch.testing.assert_close(model.judge.encode(states, lengths, owner, 3), exact, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("dtype, tolerance, int8", [("float32", 1e-5, False), ("float16", 2e-2, False),
                                                   ("float32", 1e-5, True)])
def test_cached_forward_equals_uncached(tmp_path, dtype, tolerance, int8):
    # int8 too: the cache is filled in chunks of other texts than the uncached evaluation's batches.
    cfg = tiny_cfg(tmp_path, cache_dtype=dtype, quantize_lower=int8)
    prep = prepare_pair(cfg, synthetic_pairs(300), "cpu")
    assert prep.cache_stats["computed"] == len(set(prep.train.texts) | set(prep.val.texts))
    cached = pair_logits(prep.model, prep.cache, prep.val, cfg, "cpu")
    uncached = pair_logits(prep.model, None, prep.val, cfg, "cpu")
    assert np.abs(cached).max() > 0
    np.testing.assert_allclose(cached, uncached, atol=tolerance, rtol=tolerance)
    # A second run reads every text from the cache and computes nothing.
    again = prepare_pair(cfg, synthetic_pairs(300), "cpu")
    assert again.cache_stats["computed"] == 0


def test_a_texts_int8_states_do_not_depend_on_the_texts_beside_it(tmp_path):
    """Dynamic int8 scales activations per batch: a text's states must come from its own batch."""
    cfg = tiny_cfg(tmp_path, quantize_lower=True)
    model = build_pair_model(cfg)
    texts = list(synthetic_pairs(20).a[:6]) + [" ".join(synthetic_pairs(20).b[:6])]  # the last one long: 2 windows
    together = encode_windows(model, texts, cfg)
    for text, (states, lengths) in zip(texts, together):
        alone_states, alone_lengths = encode_windows(model, [text], cfg)[0]
        assert np.array_equal(states, alone_states) and np.array_equal(lengths, alone_lengths)
    assert len(together[-1][1]) == 2


def test_swap_gives_exactly_one_minus_p():
    for z in (np.linspace(-40, 40, 2001), np.random.default_rng(0).normal(0, 3, 1000), np.array([0.0, -0.0, 1e-300])):
        assert np.array_equal(prob_from_logit(-z), 1.0 - prob_from_logit(z))


def test_a_damaged_cache_entry_is_rebuilt_never_read(tmp_path):
    cfg = tiny_cfg(tmp_path)
    prep = prepare_pair(cfg, synthetic_pairs(300), "cpu")
    before = pair_logits(prep.model, prep.cache, prep.val, cfg, "cpu")
    torn, flipped = prep.cache.path(prep.val.texts[0]), prep.cache.path(prep.val.texts[1])
    torn.write_bytes(torn.read_bytes()[:-37])  # a torn write
    raw = bytearray(flipped.read_bytes())
    raw[40] ^= 0xFF  # one damaged byte inside the states
    flipped.write_bytes(bytes(raw))
    cache = open_cache(cfg, prep.model)
    assert cache.get(prep.val.texts[0]) is None and not torn.exists()  # detected and deleted
    stats = fill_cache(prep.model, cache, prep.val.texts, cfg)
    assert stats["computed"] == 2 and stats["rebuilt"] == 2  # the flipped one found by the validity pass
    np.testing.assert_allclose(pair_logits(prep.model, cache, prep.val, cfg, "cpu"), before, atol=1e-6)


CACHE_SCRIPT = """
import sys
from trainers.config import DPOConfig
from trainers.data.pairs import synthetic_pairs
from trainers.pair import build_pair_model, fill_cache, open_cache
cfg = DPOConfig(mode="pair", top_layers=1, window=6, max_windows=2, cache_dir=sys.argv[1], cache_dtype="float32",
                quantize_lower=False, cache_batch=1)
model = build_pair_model(cfg)
pairs = synthetic_pairs(6000, seed=3)
fill_cache(model, open_cache(cfg, model), sorted(set(pairs.a) | set(pairs.b)), cfg)
"""


def test_caching_killed_midway_resumes_with_only_valid_entries(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CACHE_SCRIPT, str(tmp_path / "cache")], env=env)
    from raycluster import files_growth, wait_for

    cache_dir = tmp_path / "cache"
    wait_for(lambda: len(list(cache_dir.rglob("*.bin"))) >= 200 or proc.poll() is not None, 60, "200 cache entries",
             files_growth(cache_dir))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    cfg = tiny_cfg(tmp_path, cache_batch=1)
    model = build_pair_model(cfg)
    cache = open_cache(cfg, model)
    pairs = synthetic_pairs(6000, seed=3)
    texts = sorted(set(pairs.a) | set(pairs.b))
    written = len(list(cache.root.rglob("*.bin")))
    assert 200 <= written < len(texts), "the kill should land mid-way"
    stats = fill_cache(model, cache, texts, cfg)
    assert stats["rebuilt"] == 0 and stats["computed"] == len(texts) - written
    data = PairTexts.build(pairs.take(np.arange(200)), model.tokenizer, model.text_budget(cfg))
    np.testing.assert_allclose(pair_logits(model, cache, data, cfg, "cpu"), pair_logits(model, None, data, cfg, "cpu"),
                               atol=1e-5, rtol=1e-5)


class Killed(Exception):
    pass


def test_training_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    cfg = tiny_cfg(tmp_path, epochs=2, max_pairs=400)
    loss = resolve_preference_loss(cfg.loss)
    checkpoint_every_step = replace(cfg, checkpoint_minutes=0.0)

    whole = prepare_pair(cfg, synthetic_pairs(400), "cpu")
    straight = PairRun.start(whole.model.judge, cfg)
    run_pair_epochs(straight, whole, loss, checkpoint_every_step, "cpu")

    saved = []

    def checkpoint(run):
        saved.append(run.state_dict())
        if run.epoch == 1 and run.step == 7:  # killed in the second epoch, after its 7th step
            raise Killed

    first = prepare_pair(cfg, synthetic_pairs(400), "cpu")
    interrupted = PairRun.start(first.model.judge, cfg)
    with pytest.raises(Killed):
        run_pair_epochs(interrupted, first, loss, checkpoint_every_step, "cpu", checkpoint=checkpoint)
    state = saved[-1]
    second = prepare_pair(cfg, synthetic_pairs(400), "cpu")
    resumed = PairRun.start(second.model.judge, cfg)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.step) == (1, 7)
    run_pair_epochs(resumed, second, loss, checkpoint_every_step, "cpu")
    for (name, a), (_, b) in zip(straight.judge.state_dict().items(), resumed.judge.state_dict().items()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


def test_trained_pair_scorer_learns_and_score_pairs_swaps_exactly(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path, epochs=3, max_pairs=1500, lr=2e-3, bf16=True)  # as served: bfloat16 top layers
    prep = prepare_pair(cfg, synthetic_pairs(1500), "cpu")
    run = PairRun.start(prep.model.judge, cfg)
    run_pair_epochs(run, prep, resolve_preference_loss(cfg.loss), cfg, "cpu")
    assert run.best_agreement > 0.75, run.history  # the synthetic judge's rule is learnable; chance is 0.5
    save_pair_scorer(tmp_path / "scorer", cfg, run.best_state, {"loss": "dpo", "reward_scale": 1.0, "beta": 1.0})
    scorer = PreferenceScorer.load(tmp_path / "scorer")
    assert isinstance(scorer, PairScorer)

    test = synthetic_pairs(200, seed=99)
    p, q = score_pairs_both_orders(tmp_path / "scorer", test, tmp_path)
    assert np.array_equal(q, 1.0 - p)
    assert "agreement with the labels" in capsys.readouterr().out
    # Serving from raw text agrees with the training-side (cached) scores.
    data = PairTexts.build(test, prep.model.tokenizer, prep.model.text_budget(cfg))
    prep.model.judge.load_state_dict(run.best_state)
    np.testing.assert_allclose(prob_from_logit(pair_logits(prep.model, prep.cache, data, cfg, "cpu")), p, atol=2e-2)
    assert scorer.rank(test.prompt[0], [test.a[0], test.b[0]]) == ([0, 1] if p[0] >= 0.5 else [1, 0])


@pytest.mark.slow
def test_train_dpo_pair_killed_mid_epoch_resumes_and_serves(tmp_path):
    """The real command on a local Ray cluster: killed after a mid-epoch checkpoint, resumed with
    ``--resume`` from that step, then the saved scorer swaps exactly."""
    from raycluster import files_growth, kill_session, lossforge, wait_exit, wait_for

    out = tmp_path / "run"
    args = ["train-dpo", "--mode", "pair", "--out", str(out), "--max-pairs", "1500", "--epochs", "1", "--window", "8",
            "--max-windows", "2", "--top-layers", "1", "--cache-dir", str(tmp_path / "cache"), "--lr", "1e-3",
            "--checkpoint-minutes", "0.01"]
    driver = lossforge(*args, cwd=tmp_path, log=tmp_path / "run1.log")
    try:
        snapshot = out / "ray" / "train-dpo" / "checkpoint_manager_snapshot.json"
        wait_for(lambda: snapshot.exists() and '"checkpoint_dir_name"' in snapshot.read_text(), 240, "a checkpoint",
                 files_growth(out, tmp_path / "cache", tmp_path / "run1.log"))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        kill_session(driver.pid)
    assert not (out / "metrics.json").exists(), (tmp_path / "run1.log").read_text()[-3000:]
    resumed = lossforge("train-dpo", "--out", str(out), "--resume", cwd=tmp_path, log=tmp_path / "run2.log")
    try:
        assert wait_exit(resumed, 240, files_growth(out, tmp_path / "run2.log")) == 0, \
            (tmp_path / "run2.log").read_text()[-3000:]
    finally:
        kill_session(resumed.pid)
    log = (tmp_path / "run2.log").read_text()
    assert "[resumed at epoch 1 step" in log, log[-3000:]
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert metrics["history"][-1]["computed"] == 0  # the resumed run read every text from the cache
    scorer = PreferenceScorer.load(out / "scorer")
    test = synthetic_pairs(50, seed=5)
    p = scorer.prob_a_better(test.prompt, test.a, test.b)
    assert np.array_equal(scorer.prob_a_better(test.prompt, test.b, test.a), 1.0 - p)


def test_length_format_rule_learns_length():
    from trainers.data.pairs import PreferencePairs
    from trainers.pair import length_format_rule

    rng = np.random.default_rng(0)
    tokenizer = word_tokenizer(["w"])
    a = [" ".join(["w"] * int(n)) for n in rng.integers(1, 40, 400)]
    b = [" ".join(["w"] * int(n)) + "\n- w" * int(k) for n, k in zip(rng.integers(1, 40, 400), rng.integers(0, 3, 400))]
    p = np.array([float(len(x) > len(y)) for x, y in zip(a, b)], dtype=np.float32)
    pairs = PreferencePairs([""] * 400, a, b, p)
    assert length_format_rule(pairs.take(np.arange(300)), pairs.take(np.arange(300, 400)), tokenizer)["agreement"] > 0.9


class _Payload:
    """Unpickled, it would create ``marker``: what a tampered scorer file could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pair_scorers_head_is_read_as_data_never_run(tmp_path):
    """A scorer folder is handed between users: a crafted ``pair_judge.pt`` is refused in one line
    and its payload never runs (torch < 2.6, which the package accepts, unpickles by default);
    a torch file of the wrong weights is a clear error too. Also: one scoring call larger than
    the answer cache."""
    from trainers.errors import DataError
    from trainers.pair import JUDGE_FILE

    cfg = tiny_cfg(tmp_path)
    prep = prepare_pair(cfg, synthetic_pairs(40), "cpu")
    save_pair_scorer(tmp_path / "scorer", cfg, prep.model.judge.state_dict(), {"loss": "dpo", "reward_scale": 1.0, "beta": 1.0})
    scorer = PreferenceScorer.load(tmp_path / "scorer")
    assert isinstance(scorer, PairScorer)
    # One call with more distinct answers than the answer cache holds: served, not a KeyError.
    texts = ["one answer", "another", "a third one", "and a fourth"]
    whole = scorer.answer_states(texts)
    small = PreferenceScorer.load(tmp_path / "scorer")
    small.answer_cache = 2
    torch.testing.assert_close(small.answer_states(texts), whole)
    torch.save({"head.0.weight": _Payload(tmp_path / "pwned")}, tmp_path / "scorer" / JUDGE_FILE)
    with pytest.raises(DataError, match="refused") as refused:
        PreferenceScorer.load(tmp_path / "scorer")
    assert "\n" not in str(refused.value) and not (tmp_path / "pwned").exists()
    torch.save({"head.0.weight": torch.zeros(2, 2)}, tmp_path / "scorer" / JUDGE_FILE)
    with pytest.raises(DataError, match="not this scorer's weights"):
        PreferenceScorer.load(tmp_path / "scorer")


@pytest.mark.parametrize("edit, field", [({"top_layers": 99}, "top_layers"), ({"top_layers": "x"}, "top_layers"),
                                         ({"window": 0}, "window"), ({"max_windows": None}, "max_windows"),
                                         ({"quantize_lower": None}, "quantize_lower")])
def test_a_pair_scorer_json_with_a_bad_field_is_one_line_naming_it(tmp_path, edit, field):
    import json

    from trainers.errors import DataError

    cfg = tiny_cfg(tmp_path)
    prep = prepare_pair(cfg, synthetic_pairs(40), "cpu")
    save_pair_scorer(tmp_path / "scorer", cfg, prep.model.judge.state_dict(), {"loss": "dpo", "reward_scale": 1.0, "beta": 1.0})
    meta = json.loads((tmp_path / "scorer" / "scorer.json").read_text())
    meta = {k: v for k, v in {**meta, **edit}.items() if v is not None}
    (tmp_path / "scorer" / "scorer.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=f"scorer.json, field '{field}'"):
        PreferenceScorer.load(tmp_path / "scorer")
