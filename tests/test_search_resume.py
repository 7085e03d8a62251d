"""Kill a search's driver with SIGKILL mid-search, resume it, and get exactly the budget."""
import os
import signal
import time

import pytest
from raycluster import kill_session, lossforge, wait_for

from search.evaluations import EvaluationLog

pytestmark = pytest.mark.slow

BUDGET = 6


def test_sigkill_then_resume_evaluates_exactly_the_budget(tmp_path):
    log = EvaluationLog(tmp_path / "k")
    driver = lossforge("search", "--name", "k", "--storage", str(tmp_path), "--budget", str(BUDGET), "--pack", "2",
                       "--epochs", "4", "--concurrency", "1", cwd=tmp_path, log=tmp_path / "run1.log")
    try:
        # Kill once the first pack is told and the second is dispatched (in flight).
        wait_for(lambda: len(log.told()) >= 2 and len(log.evaluations()) >= 4, 240, "the first pack")
        time.sleep(4)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        kill_session(driver.pid)  # the whole local cluster dies with it, as on a reboot
    before = log.told()
    assert 2 <= len(before) < BUDGET, (tmp_path / "run1.log").read_text()[-3000:]

    resumed = lossforge("resume", "k", "--storage", str(tmp_path), cwd=tmp_path, log=tmp_path / "run2.log")
    try:
        assert resumed.wait(400) == 0, (tmp_path / "run2.log").read_text()[-3000:]
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
