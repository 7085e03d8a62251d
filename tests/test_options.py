"""The command line's boundary and the search driver's pieces, without a Ray cluster: options
derived from the dataclasses, validation before anything starts, the error contract, the
searcher's replay, job specs. Fast: none of these starts Ray."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from search.cli import build_parser, main
from search.engine.evaluations import EvaluationLog
from search.engine.options import SearchOptions
from search.tasks import TASKS, task_options_classes
from search.tasks.pu import PUSearchOptions
from trainers.boundary import DIVERGED_FITNESS, CandidateResult, PackReport
from trainers.errors import UsageError


def test_bad_search_options_fail_before_ray_starts(tmp_path, capsys):
    assert main(["search", "--name", "x", "--storage", str(tmp_path), "--optimizer", "TwoPointDE"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["search", "--name", "x", "--storage", str(tmp_path), "--order", "7"]) == 2
    assert main(["search", "--name", "x", "--storage", str(tmp_path), "--seed-losses", "pan,bogus"]) == 2
    assert main(["search", "--name", "x", "--storage", str(tmp_path), "--train", str(tmp_path / "none.parquet")]) == 2
    assert main(["resume", "never-ran", "--storage", str(tmp_path)]) == 2
    assert not (tmp_path / "x").exists()


def test_a_search_can_start_from_a_shipped_loss_of_its_order(tmp_path, capsys):
    """--seed-losses zoo:NAME: the zoo file's exact coefficients are the first ask; a zoo loss of
    another order, or one the zoo lacks, is refused before anything starts."""
    from search.engine.space import TaylorSpace
    from trainers.pu import resolve_loss

    space = TaylorSpace(order=2)
    point = space.seed_point("zoo:pu-taylor-v3")
    assert np.allclose(point, space.to_vector(resolve_loss("zoo:pu-taylor-v3")))
    assert not np.allclose(point, space.seed_point("pan"))
    for bad, says in [(["--order", "3"], "order 2"), ([], "zoo:nope")]:
        name = "zoo:nope" if not bad else "zoo:pu-taylor-v3"
        assert main(["search", "--name", "x", "--storage", str(tmp_path), "--seed-losses", f"pan,{name}", *bad]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_order_2_search_starts_from_pan_and_the_shipped_losses(tmp_path):
    """By default a PU search of order 2 seeds PAN and the shipped v2/v3 (each exactly: inside the
    space's bounds, so the exported file of a winning seed trains as --loss zoo:NAME); another
    order has no shipped loss, so PAN alone; --seed-losses replaces the default; and the final
    report's note names a shipped loss the re-evaluation exported."""
    from search.engine.options import with_task_defaults
    from search.engine.reevaluation import REEVALUATION_FILE, exported_loss_note
    from search.engine.space import TaylorSpace
    from trainers.pu import resolve_loss

    pu = TASKS["pu"]
    shipped = ["zoo:pu-taylor-v2", "zoo:pu-taylor-v3"]
    assert with_task_defaults(pu, SearchOptions()).seed_losses == ["pan", *shipped]
    assert with_task_defaults(pu, SearchOptions(order=3)).seed_losses == ["pan"]
    assert with_task_defaults(pu, SearchOptions(seed_losses=["naive"])).seed_losses == ["naive"]
    assert with_task_defaults(TASKS["dpo"], SearchOptions(task="dpo")).seed_losses == ["dpo"]
    space = TaylorSpace(order=2)
    for name in shipped:
        loss, point = resolve_loss(name), space.to_loss(space.seed_point(name))
        assert point.coefficients == pytest.approx(loss.coefficients, abs=0) and point.center == pytest.approx(loss.center, abs=0)
    (tmp_path / REEVALUATION_FILE).write_text(json.dumps(
        {"winner": 1, "rows": [{"id": 1, "source": "seed:zoo:pu-taylor-v2"}, {"id": -2, "source": "control:naive"}]}))
    note = exported_loss_note(tmp_path)
    assert note.startswith("the exported loss is the shipped zoo:pu-taylor-v2") and "--loss zoo:pu-taylor-v2" in note


def test_submit_passes_every_search_option_through():
    from search.engine.options import options_from_args, search_argv

    args = build_parser().parse_args(["submit", "--name", "s", "--budget", "100", "--gpus-per-worker", "0.25",
                                      "--seed-losses", "pan,nnpu", "--order", "3", "--train", "/data/a",
                                      "--train", "/data/b", "--folds", "3", "--controls", "pan", "--rungs", "none",
                                      "--no-exact-controls"])
    opts = options_from_args(args, task_options_classes())
    assert opts.train == ["/data/a", "/data/b"] and opts.task_options.folds == 3 and opts.task_options.rungs == []
    again = options_from_args(build_parser().parse_args(["search", *search_argv(opts)]), task_options_classes())
    assert again == opts and again.task_options.exact_controls is False
    on = options_from_args(build_parser().parse_args(["submit", "--exact-controls"]), task_options_classes())
    assert options_from_args(build_parser().parse_args(["search", *search_argv(on)]), task_options_classes()) == on
    assert opts.storage == "~/lossforge_results"  # a job's working directory is temporary
    with pytest.raises(UsageError, match="--mode is an option of --task dpo"):
        options_from_args(build_parser().parse_args(["search", "--mode", "causal"]), task_options_classes())


def test_pack_auto_spreads_the_budget_over_one_round_within_caps():
    from search.engine.options import options_from_args
    from search.engine.driver import auto_pack

    pu, dpo = TASKS["pu"], TASKS["dpo"]

    assert auto_pack(pu, SearchOptions(budget=32, task_options=PUSearchOptions()), concurrency=2) == 16
    assert auto_pack(pu, SearchOptions(budget=5, task_options=PUSearchOptions()), concurrency=2) == 3
    assert auto_pack(pu, SearchOptions(budget=5000, task_options=PUSearchOptions()), concurrency=2) == 64  # CPU cap: 128 members, 2 folds each
    assert auto_pack(pu, SearchOptions(budget=5000, task_options=PUSearchOptions(seeds_per_candidate=4)), concurrency=2) == 16
    assert auto_pack(pu, SearchOptions(budget=5000, gpus_per_worker=0.25, task_options=PUSearchOptions()), concurrency=4) == 256
    assert auto_pack(dpo, SearchOptions(task="dpo", budget=5000), concurrency=1) == 16
    args = build_parser().parse_args(["search", "--pack", "auto"])
    assert options_from_args(args, task_options_classes()).pack is None
    assert options_from_args(build_parser().parse_args(["search", "--pack", "12"]), task_options_classes()).pack == 12
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--pack", "many"])


def test_building_the_parser_imports_neither_torch_ray_nor_nevergrad():
    code = ("import sys, time; t = time.perf_counter(); from search.cli import build_parser; build_parser(); "
            "assert not {'torch', 'ray', 'nevergrad'} & set(sys.modules), sorted({'torch', 'ray', 'nevergrad'} & set(sys.modules)); "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 1.0
    started = time.perf_counter()
    for command in (["--help"], ["train-pu", "--help"], ["search", "--help"]):
        subprocess.run([sys.executable, "-m", "search.cli", *command], capture_output=True, check=True)
    assert (time.perf_counter() - started) / 3 < 1.5  # the interpreter's start included


def test_every_field_of_every_config_dataclass_is_a_flag_of_its_commands():
    import argparse
    from dataclasses import fields

    from trainers.config import DPOConfig, PUConfig

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    search = [SearchOptions, *task_options_classes().values()]
    owners = {"train-pu": [PUConfig], "train-dpo": [DPOConfig], "search": search, "submit": search}
    for command, classes in owners.items():
        flags = {a.dest for a in commands[command]._actions}
        for cls in classes:
            for f in fields(cls):
                assert (f.name in flags) == f.metadata.get("cli", True), (command, cls.__name__, f.name)
    args = build_parser().parse_args(["train-pu", "--lr", "0.01", "--hidden", "64"])
    assert (args.lr, args.hidden, args.epochs) == (0.01, 64, PUConfig().epochs)


def test_only_input_errors_are_one_line_and_exit_2_a_bug_keeps_its_traceback(monkeypatch, capsys):
    import search.cli as cli

    assert main(["train-pu", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--epochs" in err and "Traceback" not in err

    def broken(args):
        raise KeyError("a bug of ours")

    monkeypatch.setattr(cli, "run_train_pu", broken)
    with pytest.raises(KeyError):  # not swallowed as "bad input": the console script prints it, exit 1
        main(["train-pu", "--epochs", "1"])


def test_the_searchers_replay_continues_exactly_where_the_log_stops(tmp_path):
    """Asks, tells, pending packs and the optimiser's state come back from the log alone."""
    from search.engine.searcher import PackSearcher
    from search.engine.space import TaylorSpace

    space = TaylorSpace(2)
    seeds = [("pan", space.seed_point("pan"))]

    def searcher():
        return PackSearcher(space, "TwoPointsDE", budget=7, pack=3, num_workers=3, seed=1, log=EvaluationLog(tmp_path),
                            seed_vectors=seeds, progress=lambda m: None)

    first = searcher()
    pack0 = first.suggest("t0")
    pack1 = first.suggest("t1")
    assert [c["id"] for c in pack0["candidates"]] == [0, 1, 2] and pack1["pack"] == 1
    report = PackReport([CandidateResult(i, 0.1 * i, "ok") for i in (0, 1, 2)], 1, 1, True)
    first.on_trial_complete("t0", report.to_dict())
    assert EvaluationLog(tmp_path).evaluations()[0].source == "seed:pan"

    again = searcher()  # a crash here: pack 1 was asked, never told
    assert (again.asked, again.told, again.pending_packs, again.packs_to_run()) == (6, 3, [1], 2)
    redo = again.suggest("t2")
    assert redo == pack1  # the same pack, the same ids and vectors: its Train run resumes
    fresh = again.suggest("t3")
    assert [c["id"] for c in fresh["candidates"]] == [6]  # the budget, and not one more
    assert again.suggest("t4") == "FINISHED"
    np.testing.assert_allclose(fresh["candidates"][0]["vector"], first.suggest("t5")["candidates"][0]["vector"])
    again.on_trial_complete("t2", None, error=True)  # a failed trial: every member told as an error
    told = {e.id: e for e in EvaluationLog(tmp_path).told()}
    assert told[3].status == "error" and told[3].fitness == DIVERGED_FITNESS


def test_no_working_dir_runs_the_clusters_own_lossforge():
    from search.session.cluster_jobs import job_spec

    entrypoint, env = job_spec(["--budget", "4"], working_dir=False)
    assert entrypoint == "lossforge search --budget 4"
    assert "PYTHONPATH" not in env["env_vars"] and "working_dir" not in env and sys.executable not in entrypoint
    entrypoint, env = job_spec(["--budget", "4"], working_dir=True)
    assert entrypoint.startswith("python -m search.cli search") and "working_dir" in env


def _finished_log(folder, budget=4, pack=2):
    """A finished search's log, written through the real searcher."""
    from search.engine.searcher import PackSearcher

    folder.mkdir(parents=True, exist_ok=True)
    from search.engine.space import TaylorSpace

    searcher = PackSearcher(TaylorSpace(2), "TwoPointsDE", budget, pack, pack, 0, EvaluationLog(folder), progress=lambda m: None)
    for t in range(budget // pack):
        config = searcher.suggest(f"t{t}")
        results = [CandidateResult(c["id"], 0.01 * c["id"] - 0.02, "ok", {"rung": 0}) for c in config["candidates"]]
        searcher.on_trial_complete(f"t{t}", PackReport(results, 1, 1, True).to_dict())
    return searcher


def test_a_torn_last_line_at_any_offset_is_repaired_and_its_pack_alone_reported_again(tmp_path):
    """Truncate the log at every byte of its last event (a crash inside the write), repair, replay:
    exactly the cut candidate is pending, its pack is re-dispatched for it alone, the result the
    pack reports again is told once, and the log parses -- the budget exactly, nothing lost."""
    from search.engine.searcher import PackSearcher
    from search.engine.space import TaylorSpace

    _finished_log(tmp_path / "full")
    full = (tmp_path / "full" / "evaluations.jsonl").read_bytes()
    last_start = full.rstrip(b"\n").rfind(b"\n") + 1
    original = {e.id: e.fitness for e in EvaluationLog(tmp_path / "full").told()}
    for offset in range(last_start, len(full)):
        folder = tmp_path / f"cut{offset}"
        folder.mkdir()
        (folder / "evaluations.jsonl").write_bytes(full[:offset])
        log = EvaluationLog(folder)
        assert log.repair() == offset - last_start
        if offset > last_start:
            assert (folder / "evaluations.jsonl.torn-1").read_bytes() == full[:offset]
        searcher = PackSearcher(TaylorSpace(2), "TwoPointsDE", 4, 2, 2, 0, log, progress=lambda m: None)
        assert (searcher.asked, searcher.told, searcher.pending_packs) == (4, 3, [1]), offset
        config = searcher.suggest("again")
        (cut,) = config["candidates"]
        report = PackReport([CandidateResult(cut["id"], original[cut["id"]], "ok")], 1, 1, True)
        searcher.on_trial_complete("again", report.to_dict())
        assert searcher.suggest("more") == "FINISHED"
        assert {e.id: e.fitness for e in log.told()} == original, offset


def test_a_corrupt_interior_line_is_refused_before_ray_starts(tmp_path, capsys):
    folder = tmp_path / "s"
    _finished_log(folder)
    (folder / "search.json").write_text(json.dumps(SearchOptions(name="s", storage=str(tmp_path)).to_dict()))
    lines = (folder / "evaluations.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (folder / "evaluations.jsonl").write_text("\n".join(lines) + "\n")
    before = (folder / "evaluations.jsonl").read_bytes()
    started = time.perf_counter()
    assert main(["resume", "s", "--storage", str(tmp_path)]) == 2
    assert time.perf_counter() - started < 10 and "line 2 is corrupt" in capsys.readouterr().err
    assert (folder / "evaluations.jsonl").read_bytes() == before
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_the_live_progress_reader_leaves_a_half_written_line_for_later(tmp_path):
    from search.jobs.train_dpo import _progress_printer

    path, lines = tmp_path / "progress.jsonl", []
    printer = _progress_printer(path, 3, lines.append)
    row = {"epoch": 1, "train_loss": 0.5, "agreement": 0.7, "agreement_lc": 0.6, "resumed_from_epoch": 0}
    text = json.dumps(row) + "\n"
    path.write_text(text + text[:20])  # the second epoch's line is still being written
    printer()
    assert len(lines) == 1 and "epoch 1/3" in lines[0]
    path.write_text(text + json.dumps({**row, "epoch": 2}) + "\n")
    printer()
    assert len(lines) == 2 and "epoch 2/3" in lines[1]


def test_every_registered_task_implements_the_whole_task_protocol():
    """Tasks follow search.tasks.Task without inheriting from it: nothing supplies a missing method."""
    from search.tasks import Task

    names = [n for n, v in vars(Task).items() if not n.startswith("_") and callable(v)]
    assert "after_search" in names and "final_report" in names
    for name, task in TASKS.items():
        assert task.name == name
        assert [n for n in names if not callable(getattr(task, n, None))] == [], name


def test_a_relative_cache_or_model_folder_means_the_drivers(tmp_path, monkeypatch):
    """Train workers run inside their trial folders: a relative --cache-dir would give every pack
    a cache of its own. The search's options hold it absolute; "~" expands on each machine."""
    from search.tasks.preference import PreferenceSearchOptions

    monkeypatch.chdir(tmp_path)
    options = PreferenceSearchOptions(cache_dir="states", model="models/m")
    assert options.cache_dir == str(tmp_path / "states") and options.model == str(tmp_path / "models/m")
    assert PreferenceSearchOptions().cache_dir.startswith("~")


def test_a_progress_line_never_shows_the_divergence_penalty_as_a_best_fitness():
    """Before any candidate or elite has finished, a progress line said "best -1000.0000"."""
    from search.session.progress import pack_line

    line = pack_line("re-evaluation")
    assert line(PackReport([], 1, 15, False, unit="training").to_dict()).endswith("training 1/15, best none finished yet")
    failed = PackReport([CandidateResult(3, DIVERGED_FITNESS, "diverged")], 2, 15, False, unit="training")
    assert line(failed.to_dict()).endswith("best none ok")
    mixed = PackReport([CandidateResult(3, DIVERGED_FITNESS, "diverged"), CandidateResult(4, 0.0133, "ok")], 3, 15, False)
    assert line(mixed.to_dict()).endswith("rung 3/15, best 0.0133")
