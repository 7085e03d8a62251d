"""Kill a search's driver with SIGKILL mid-search, resume it, and get exactly the budget."""
import json
import os
import signal
import time

import pytest
from raycluster import files_growth, kill_session, lossforge, wait_exit, wait_for

from search.engine.evaluations import EvaluationLog

pytestmark = pytest.mark.slow

BUDGET = 6


def test_sigkill_then_resume_evaluates_exactly_the_budget(tmp_path):
    log = EvaluationLog(tmp_path / "k")
    driver = lossforge("search", "--name", "k", "--storage", str(tmp_path), "--budget", str(BUDGET), "--pack", "2",
                       "--epochs", "4", "--concurrency", "1", "--reevaluate", "0", cwd=tmp_path, log=tmp_path / "run1.log")
    try:
        # Kill once the first pack is told and the second is dispatched (in flight).
        wait_for(lambda: len(log.told()) >= 2 and len(log.evaluations()) >= 4, 240, "the first pack", files_growth(tmp_path))
        time.sleep(4)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        kill_session(driver.pid)  # the whole local cluster dies with it, as on a reboot
    before = log.told()
    assert 2 <= len(before) < BUDGET, (tmp_path / "run1.log").read_text()[-3000:]

    resumed = lossforge("resume", "k", "--storage", str(tmp_path), cwd=tmp_path, log=tmp_path / "run2.log")
    try:
        assert wait_exit(resumed, 240, files_growth(tmp_path)) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    finally:
        kill_session(resumed.pid)

    tells = [e["id"] for e in log.events() if e["event"] == "tell"]
    asks = [e["id"] for e in log.events() if e["event"] == "ask"]
    assert sorted(tells) == list(range(BUDGET)), "every candidate evaluated exactly once"
    assert sorted(asks) == list(range(BUDGET)), "no candidate asked twice"
    # evaluations finished before the kill are kept as they were
    after = {e.id: e for e in log.told()}
    assert all(after[e.id].fitness == e.fitness for e in before)
    output = (tmp_path / "run2.log").read_text()
    assert f"{len(before)} already evaluated" in output
    assert (tmp_path / "k" / "best_loss.json").exists()


def test_a_torn_last_line_is_repaired_and_its_result_comes_back_on_resume(tmp_path):
    """A crash inside the last write of the log (#12): resume cuts the torn line off (a copy is
    kept), its finished pack reports the same result again from its checkpoint, the search ends at
    exactly the budget and the log parses. One cut, mid-line, with real Ray packs; every other
    offset is cut without Ray in tests/test_options.py."""
    args = ["--name", "t", "--storage", str(tmp_path), "--budget", "4", "--pack", "2", "--epochs", "2",
            "--concurrency", "1", "--reevaluate", "0"]
    first = lossforge("search", *args, cwd=tmp_path, log=tmp_path / "run1.log")
    try:
        assert wait_exit(first, 240, files_growth(tmp_path)) == 0, (tmp_path / "run1.log").read_text()[-3000:]
    finally:
        kill_session(first.pid)
    log = EvaluationLog(tmp_path / "t")
    before = {e.id: e.fitness for e in log.told()}
    raw = log.path.read_bytes()
    last = raw.rstrip(b"\n").rfind(b"\n") + 1
    cut = last + (len(raw) - last) // 2
    log.path.write_bytes(raw[:cut])

    resumed = lossforge("resume", "t", "--storage", str(tmp_path), cwd=tmp_path, log=tmp_path / "run2.log")
    try:
        assert wait_exit(resumed, 240, files_growth(tmp_path)) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    finally:
        kill_session(resumed.pid)
    assert (tmp_path / "t" / "evaluations.jsonl.torn-1").read_bytes() == raw[:cut]
    tells = [e for e in log.events() if e["event"] == "tell"]
    assert sorted(e["id"] for e in tells) == [0, 1, 2, 3], "exactly the budget, none twice"
    assert {e.id: e.fitness for e in log.told()} == before, "the torn result came back, not an error"
    assert "torn line" in (tmp_path / "run2.log").read_text()


def test_sigkill_during_the_reevaluation_then_resume_finishes_it_without_evaluating_more(tmp_path):
    """Folds, controls, halving and the elite re-evaluation all resume: a driver killed while the
    elites retrain comes back to the same elites, finishes the stage, and tells nothing twice."""
    args = ["--name", "r", "--storage", str(tmp_path), "--budget", "4", "--pack", "2", "--epochs", "3",
            "--concurrency", "1", "--rungs", "1", "--reevaluate", "2", "--reevaluation-folds", "3"]
    driver = lossforge("search", *args, cwd=tmp_path, log=tmp_path / "run1.log")
    try:
        wait_for(lambda: "re-evaluating" in (tmp_path / "run1.log").read_text(), 300, "the re-evaluation stage", files_growth(tmp_path))
        time.sleep(3)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        kill_session(driver.pid)
    folder = tmp_path / "r"
    assert not (folder / "reevaluation.json").exists(), "killed before the stage finished"
    log_before = (folder / "evaluations.jsonl").read_bytes()
    elites_before = [line for line in (tmp_path / "run1.log").read_text().splitlines() if "re-evaluating" in line]

    resumed = lossforge("resume", "r", "--storage", str(tmp_path), cwd=tmp_path, log=tmp_path / "run2.log")
    try:
        assert wait_exit(resumed, 240, files_growth(tmp_path)) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    finally:
        kill_session(resumed.pid)
    assert (folder / "evaluations.jsonl").read_bytes() == log_before, "nothing evaluated again"
    run2 = (tmp_path / "run2.log").read_text()
    assert [line for line in run2.splitlines() if "re-evaluating" in line] == elites_before
    record = json.loads((folder / "reevaluation.json").read_text())
    searched = [r["source"] for r in record["rows"] if r["search_fitness"] is not None]
    assert {"seed:zoo:pu-taylor-v2", "seed:zoo:pu-taylor-v3"} <= set(searched), "the seed losses, whatever their rank"
    assert len(searched) <= 4 and record["winner"] is not None  # beside at most --reevaluate 2 elites
    assert (folder / "best_loss.json").exists() and "<- exported" in run2
