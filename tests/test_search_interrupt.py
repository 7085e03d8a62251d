"""Ctrl-C and SIGTERM mid-pack, two resumes at once, a copied results folder (#21): a search
stops cleanly (exit 130/143, nothing exported), exactly one writer resumes it, and it finishes
exactly -- every candidate told once, the exported loss re-evaluated on the whole log."""
from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
from raycluster import files_growth, kill_session, lossforge, wait_exit, wait_for

from search.engine.evaluations import EvaluationLog

pytestmark = pytest.mark.slow

BUDGET = 6
ARGS = ["--budget", str(BUDGET), "--pack", "2", "--epochs", "2", "--concurrency", "1", "--rungs", "1",
        "--reevaluate", "2", "--reevaluation-folds", "2"]
EXPORTS = ("best_loss.json", "final_report.json", "reevaluation.json", "leaderboard.csv")


def _interrupt_mid_pack(tmp_path, storage, sig) -> tuple[EvaluationLog, str, int]:
    """Start a search, send ``sig`` once its first pack is told and the second is training."""
    folder = storage / "s"
    log = EvaluationLog(folder)
    driver = lossforge("search", "--name", "s", "--storage", str(storage), *ARGS, cwd=tmp_path, log=tmp_path / "run1.log")
    progress = files_growth(tmp_path / "run1.log", storage)
    try:
        wait_for(lambda: len(log.told()) >= 2 and len(log.evaluations()) >= 4, 180, "the second pack", progress)
        wait_for(lambda: any(folder.glob("train/pack-00001/checkpoint_*")) or len(log.told()) >= 4, 180,
                 "the second pack's first checkpoint", progress)
        os.kill(driver.pid, sig)
        code = wait_exit(driver, 60, progress)
    finally:
        kill_session(driver.pid)
    return log, (tmp_path / "run1.log").read_text(), code


def _finished_exactly(folder, log: EvaluationLog, before: dict) -> dict:
    tells = [e["id"] for e in log.events() if e["event"] == "tell"]
    asks = [e["id"] for e in log.events() if e["event"] == "ask"]
    assert sorted(tells) == list(range(BUDGET)), "every candidate told exactly once"
    assert sorted(asks) == list(range(BUDGET)), "no candidate asked twice"
    assert all(log_e.fitness == before[log_e.id] for log_e in log.told() if log_e.id in before), "earlier results kept"
    record = json.loads((folder / "reevaluation.json").read_text())
    assert record["log_told"] == BUDGET, "the exported loss was re-evaluated on the whole log"
    best = json.loads((folder / "best_loss.json").read_text())
    assert best["name"].endswith(f"-best-{record['winner']}"), (best["name"], record["winner"])
    return record


def test_ctrl_c_mid_pack_exits_130_then_exactly_one_of_two_resumes_finishes_it_exactly(tmp_path):
    storage = tmp_path / "st"
    log, output, code = _interrupt_mid_pack(tmp_path, storage, signal.SIGINT)
    folder = storage / "s"
    assert code == 130, output[-3000:]
    assert "interrupted (SIGINT)" in output and f"lossforge resume s --storage {storage}" in output
    assert not any((folder / name).exists() for name in EXPORTS), "nothing exported from a partial search"
    before = {e.id: e.fitness for e in log.told()}
    assert 2 <= len(before) < BUDGET

    first = lossforge("resume", "s", "--storage", str(storage), cwd=tmp_path, log=tmp_path / "run2.log")
    progress = files_growth(tmp_path / "run2.log", folder)
    try:
        wait_for(lambda: "already evaluated" in (tmp_path / "run2.log").read_text(), 180,
                 "the first resume to start its trials", progress)
        second = lossforge("resume", "s", "--storage", str(storage), cwd=tmp_path, log=tmp_path / "run3.log")
        try:
            assert wait_exit(second, 120, files_growth(tmp_path / "run2.log", folder, tmp_path / "run3.log")) == 2
        finally:
            kill_session(second.pid)
        refused = (tmp_path / "run3.log").read_text()
        assert "in use by" in refused and f"pid {first.pid}" in refused and len(refused.strip().splitlines()) == 1
        assert wait_exit(first, 180, progress) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    finally:
        kill_session(first.pid)
    _finished_exactly(folder, log, before)


def test_sigterm_mid_pack_exits_143_and_a_copied_folder_resumes_where_it_lies(tmp_path):
    storage = tmp_path / "st"
    log, output, code = _interrupt_mid_pack(tmp_path, storage, signal.SIGTERM)
    assert code == 143, output[-3000:]
    assert "interrupted (SIGTERM)" in output
    original = storage / "s"
    assert not any((original / name).exists() for name in EXPORTS)
    before = {e.id: e.fitness for e in log.told()}
    copy = tmp_path / "st2" / "s"
    shutil.copytree(original, copy)
    untouched = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    # What a pre-#21 driver left after an interrupt: a re-evaluation of half the log. It is stale.
    (copy / "reevaluation.json").write_text(json.dumps({"rows": [], "winner": None, "log_told": len(before)}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = lossforge("resume", "s", "--storage", "../st2", cwd=elsewhere, log=tmp_path / "run2.log")
    try:
        assert wait_exit(resumed, 180, files_growth(tmp_path / "run2.log", copy)) == 0, \
            (tmp_path / "run2.log").read_text()[-3000:]
    finally:
        kill_session(resumed.pid)
    run2 = (tmp_path / "run2.log").read_text()
    assert "re-evaluating the elites again" in run2
    _finished_exactly(copy, EvaluationLog(copy), before)
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == untouched, "the original is not touched"
