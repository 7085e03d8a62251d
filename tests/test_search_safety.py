"""What happens around a search (#21), in seconds and without Ray: where a resumed folder is,
one writer per folder (OS lock and lease), duplicate tells in a report."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.session import lock as locks
from search.cli import main
from search.engine.evaluations import EvaluationLog
from search.engine.options import SearchOptions
from search.engine.resume import record_start
from search.engine.options import with_task_defaults
from search.tasks import TASKS
from trainers.errors import DataError, UsageError

REPO = Path(__file__).resolve().parents[1]


def _started_search(storage: Path, name: str, asked: int = 2, told: int = 2) -> Path:
    """A search folder as the driver leaves it: search.json (with the old absolute storage path a
    search wrote before #21), the start record, ``asked`` asks and ``told`` tells."""
    opts = with_task_defaults(TASKS["pu"], SearchOptions(name=name, storage=str(storage.resolve()), budget=4))
    folder = storage / name
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps(opts.to_dict()))
    log = EvaluationLog(folder)
    record_start(log, opts)
    for i in range(asked):
        log.append(event="ask", id=i, pack=i // 2, vector=[0.1 * i] * 22, source="optimizer")
    for i in range(told):
        log.append(event="tell", id=i, pack=i // 2, fitness=0.1 * i, status="ok", details={})
    return folder


def test_a_copied_folder_resumes_where_it_lies_not_where_search_json_says(tmp_path, monkeypatch):
    from search.engine.driver import prepare_search

    original = _started_search(tmp_path / "st", "sig1")
    shutil.copytree(original, tmp_path / "st2" / "sig1")
    before = {p.name: p.read_bytes() for p in original.iterdir()}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a relative --storage is the caller's, as for any path
    try:
        from search.cli import resumed_search

        opts, _ = prepare_search(*resumed_search("sig1", "../st2", None), resume=True)
    finally:
        locks.release_all()
    assert opts.folder() == (tmp_path / "st2" / "sig1").resolve() and opts.storage == "../st2"
    assert {p.name: p.read_bytes() for p in original.iterdir()} == before, "the original folder is not touched"


def test_a_new_search_json_holds_no_storage_path(tmp_path):
    from search.engine.driver import prepare_search

    try:
        opts, _ = prepare_search(TASKS["pu"], SearchOptions(name="n", storage=str(tmp_path), budget=2), resume=False)
    finally:
        locks.release_all()
    spec = json.loads((tmp_path / "n" / "search.json").read_text())
    assert "storage" not in spec and str(tmp_path) not in json.dumps(spec)
    start = EvaluationLog(tmp_path / "n").events()[0]
    assert start["event"] == "start" and start["fixed"]["order"] == 2 and start["budget"] == 2


def _holder(folder: Path, lease: bool = False) -> subprocess.Popen:
    """Another process that takes the folder's lock and keeps it until killed."""
    code = (f"import sys, time; sys.argv = ['lossforge', 'resume', 'held']; from search.session.lock import RunLock; "
            f"RunLock({str(folder)!r}, lease={lease}).acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    folder = _started_search(tmp_path, "busy")
    log_before = (folder / "evaluations.jsonl").read_bytes()
    holder = _holder(folder)
    try:
        assert main(["resume", "busy", "--storage", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by" in err[0] and f"pid {holder.pid}" in err[0] and "lossforge resume held" in err[0]
        assert main(["search", "--name", "busy", "--storage", str(tmp_path), "--resume"]) == 2
        assert "in use by" in capsys.readouterr().err
        assert (folder / "evaluations.jsonl").read_bytes() == log_before, "nothing written by the refused command"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = locks.RunLock(folder).acquire()  # the kernel dropped the dead holder's lock: taken over
    lock.release()


def test_a_lease_refuses_while_fresh_and_is_taken_over_once_expired(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "SETTLE_SECONDS", 0.05)
    holder = _holder(tmp_path, lease=True)
    try:
        lease = json.loads((tmp_path / locks.LEASE_FILE).read_text())
        assert {"owner", "pid", "host", "command", "since", "heartbeat", "expires"} <= lease.keys()
        with pytest.raises(UsageError, match=f"in use by .*pid {holder.pid}"):
            locks.RunLock(tmp_path, lease=True).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with pytest.raises(UsageError):  # killed, but its lease has not expired yet
        locks.RunLock(tmp_path, lease=True).acquire()
    lease["expires"] = time.time() - 1
    (tmp_path / locks.LEASE_FILE).write_text(json.dumps(lease))
    taker = locks.RunLock(tmp_path, lease=True).acquire()
    assert json.loads((tmp_path / locks.LEASE_FILE).read_text())["pid"] == os.getpid()
    taker.release()
    assert not (tmp_path / locks.LEASE_FILE).exists()


def test_report_warns_when_a_log_holds_duplicate_tells(tmp_path, capsys):
    folder = _started_search(tmp_path, "dup")
    log = EvaluationLog(folder)
    for i in range(2):  # what two resumes at once left before #21: ids 0-1 told twice
        log.append(event="tell", id=i, pack=0, fitness=0.5, status="ok", details={})
    assert main(["report", "dup", "--storage", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "told more than once" in err and "0, 1" in err
    log.path.write_text("".join(line + "\n" for line in log.path.read_text().splitlines()[:-2]))
    assert main(["report", "dup", "--storage", str(tmp_path)]) == 0
    assert "told more than once" not in capsys.readouterr().err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_stops_a_command_with_130_or_143_one_line_and_no_output(tmp_path, sig, code):
    """The CLI's own handlers (not Python's default, not Ray's exit-15 SIGTERM handler)."""
    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "train-pu", "--epochs", "400", "--out", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    try:
        while "epoch 1/" not in proc.stdout.readline():  # training has started
            assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"interrupted ({signal.Signals(sig).name})" in lines[0] and "Traceback" not in err
    assert not out.exists()


def test_a_reevaluation_is_kept_only_while_the_log_holds_what_it_saw():
    from search.engine.reevaluation import _still_current

    chosen = [{"id": -1, "search_fitness": None}, {"id": 3, "search_fitness": 0.5}, {"id": 8, "search_fitness": None}]
    assert _still_current({"log_told": 8, "rows": []}, 8, chosen)
    assert not _still_current({"log_told": 4, "rows": []}, 8, chosen), "a resume added evaluations: redo"
    before_21 = {"rows": [{"id": -1, "search_fitness": None}, {"id": 3, "search_fitness": 0.5}]}
    assert _still_current(before_21, 8, chosen), "an older record of the same elites is kept"
    assert not _still_current({"rows": [{"id": 1, "search_fitness": 0.4}]}, 8, chosen)


def test_elites_skip_copies_of_a_control_or_of_a_better_elite():
    from search.engine.reevaluation import choose_elites

    pan = {"name": "pan", "coefficients": [1.0, 2.0], "center": [0.5]}
    told = [{"id": 0, "source": "seed:pan", "vector": [1.0, 2.0, 0.5], "search_fitness": 0.9},
            {"id": 3, "source": "optimizer", "vector": [1.0, 2.0, 0.5], "search_fitness": 0.8},
            {"id": 1, "source": "optimizer", "vector": [3.0, 2.0, 0.5], "search_fitness": 0.7},
            {"id": 4, "source": "optimizer", "vector": [3.0, 2.0, 0.5], "search_fitness": 0.6},
            {"id": 2, "source": "optimizer", "vector": [4.0, 2.0, 0.5], "search_fitness": 0.1},
            {"id": 5, "source": "optimizer", "vector": [5.0, 2.0, 0.5], "search_fitness": 0.0}]
    chosen = choose_elites(told, [1.0, 2.0, 0.5], [pan], 2, 6)
    assert [e["id"] for e in chosen] == [-1, 1, 2], "two distinct elites; the recommendation is a control"
    chosen = choose_elites(told, [9.0, 2.0, 0.5], [pan], 1, 6)
    assert [e["id"] for e in chosen] == [-1, 1, 6], "a new recommendation is re-evaluated beside the elites"
    exact = choose_elites(told, [1.0, 2.0, 0.5], [{**pan, "exact": "pan"}], 2, 6)
    assert [e["id"] for e in exact] == [-1, 0, 1, 2], \
        "an exact control is not its Taylor point: the seed is re-evaluated beside two elites"
    assert exact[0]["exact"] == "pan" and "exact" not in exact[1]


def test_seed_losses_are_reevaluated_however_the_search_ranked_them():
    from search.engine.reevaluation import choose_elites

    pan = {"name": "pan", "coefficients": [1.0, 2.0], "center": [0.5]}
    told = [{"id": 0, "source": "seed:pan", "vector": [1.0, 2.0, 0.5], "search_fitness": 0.0},
            {"id": 1, "source": "seed:zoo:pu-taylor-v3", "vector": [7.0, 2.0, 0.5], "search_fitness": -0.9},
            {"id": 2, "source": "optimizer", "vector": [3.0, 2.0, 0.5], "search_fitness": 0.7},
            {"id": 3, "source": "optimizer", "vector": [4.0, 2.0, 0.5], "search_fitness": 0.6},
            {"id": 4, "source": "seed:zoo:pu-taylor-v2", "vector": [3.0, 2.0, 0.5], "search_fitness": 0.5}]
    chosen = choose_elites(told, [1.0, 2.0, 0.5], [pan], 1, 5)
    assert [e["id"] for e in chosen] == [-1, 1, 4, 3], \
        "the worst-ranked seed too, beside one elite; a seed equal to a control, or a copy of a seed, is trained once"
    assert [e["source"] for e in chosen][1:3] == ["seed:zoo:pu-taylor-v3", "seed:zoo:pu-taylor-v2"]


def test_shrinkage_counts_only_elites_searched_at_the_full_epochs():
    from search.engine.reevaluation import summarise
    from trainers.boundary import CandidateResult

    def result(i, fitness):
        return CandidateResult(i, fitness, "ok", {"epochs": 10, "sd": [0.1], "scale": [1.0]})

    # halving stopped elite 2 after 3 epochs, where every margin is lower: not the same quantity
    chosen = [{"id": -1, "source": "control:pan", "vector": [0.0], "search_fitness": None},
              {"id": 1, "source": "optimizer", "vector": [1.0], "search_fitness": 0.5, "search_epochs": 10},
              {"id": 2, "source": "optimizer", "vector": [2.0], "search_fitness": -3.0, "search_epochs": 3},
              {"id": 3, "source": "recommendation", "vector": [3.0], "search_fitness": None}]
    results = [result(-1, 0.0), result(1, 0.2), result(2, 0.1), result(3, 0.05)]
    record = summarise(chosen, results, members=4)
    assert record["shrinkage"] == pytest.approx(0.3) and record["shrinkage_elites"] == 1
    # a search that trains every candidate to the end records no epochs (the preference task): all count
    unrecorded = [{k: v for k, v in e.items() if k != "search_epochs"} for e in chosen]
    assert summarise(unrecorded, results, members=4)["shrinkage"] == pytest.approx((0.3 - 3.1) / 2)
    assert summarise(chosen[:1] + chosen[2:], results, members=4)["shrinkage"] is None


def test_save_with_overwrite_replaces_the_folder_instead_of_merging(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "stale.txt").write_text("from an earlier run")
    assert main(["train-pu", "--epochs", "1", "--save", str(model), "--overwrite"]) == 0
    assert sorted(p.name for p in model.iterdir()) == ["classifier.json", "model.safetensors"]


def test_a_resume_checks_the_checkpoints_it_will_load_not_every_finished_packs(tmp_path):
    from search.engine.resume import resumed_runs

    folder = _started_search(tmp_path, "s", asked=4, told=2)  # pack 0 told, pack 1 owed
    (folder / "train" / "reevaluation-4").mkdir(parents=True)
    assert resumed_runs(folder) == [folder / "train" / "pack-00001", folder / "train" / "reevaluation-4"]


def test_an_interrupted_search_keeps_its_lock_until_the_command_line_has_stopped_ray(tmp_path, monkeypatch):
    """Ctrl-C reaches run_search while the run's Ray workers may still write checkpoints into the
    folder: the lock must outlive them. run_search keeps it on an interrupt (it still frees it on
    any other exit) and main() frees it only after disconnecting Ray."""
    import search.cli
    import search.engine.driver as driver

    order = []

    def interrupted(task, opts, *args):
        locks.hold(opts.folder())
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "_run_search", interrupted)
    with pytest.raises(KeyboardInterrupt):
        driver.run_search(TASKS["pu"], SearchOptions(name="i", storage=str(tmp_path), budget=2))
    assert (tmp_path / "i").resolve() in locks._HELD, "released while Ray's workers may still write"
    locks.release_all()

    def failed(task, opts, *args):
        locks.hold(opts.folder())
        raise RuntimeError("a failure")

    monkeypatch.setattr(driver, "_run_search", failed)
    with pytest.raises(RuntimeError):
        driver.run_search(TASKS["pu"], SearchOptions(name="f", storage=str(tmp_path), budget=2))
    assert not locks._HELD

    monkeypatch.setattr(driver, "_run_search", interrupted)
    monkeypatch.setattr(search.cli, "disconnect_ray", lambda code: order.append(("disconnect", bool(locks._HELD))))
    assert main(["search", "--name", "c", "--storage", str(tmp_path)]) == 130
    assert order == [("disconnect", True)] and not locks._HELD


def test_a_search_killed_before_its_start_record_gets_one_on_resume(tmp_path):
    """search.json is written before the log's start record: a kill between the two left a search
    whose later edits nothing would catch. Nothing was asked yet, so the resume records the start."""
    from search.cli import resumed_search
    from search.engine.driver import prepare_search

    folder = _started_search(tmp_path, "bare", asked=0, told=0)
    (folder / "evaluations.jsonl").write_text("")  # as a kill right after search.json left it
    try:
        prepare_search(*resumed_search("bare", str(tmp_path), None), resume=True)
    finally:
        locks.release_all()
    events = EvaluationLog(folder).events()
    assert [e["event"] for e in events] == ["start"] and events[0]["fixed"]["order"] == 2
    spec = json.loads((folder / "search.json").read_text())
    spec["order"] = 3
    (folder / "search.json").write_text(json.dumps(spec))
    try:
        with pytest.raises(DataError, match="started with 2"):
            prepare_search(*resumed_search("bare", str(tmp_path), None), resume=True)
    finally:
        locks.release_all()


def test_a_remote_fuse_or_nolock_nfs_folder_takes_the_lease_not_the_os_lock(tmp_path, monkeypatch):
    """s3fs, gcsfuse and NFS mounted nolock grant flock without error but only on this machine:
    the mount table sends such folders to the lease, which other hosts see."""
    mounts = "\n".join([
        "/dev/sda1 / ext4 rw,relatime 0 0",
        "s3fs /mnt/bucket fuse.s3fs rw,nosuid 0 0",
        "gcs /mnt/my\\040gcs fuse.gcsfuse rw 0 0",
        "srv:/export /mnt/nfs nfs4 rw,local_lock=none 0 0",
        "srv:/old /mnt/oldnfs nfs rw,nolock 0 0",
        "fuse-overlayfs /mnt/overlay fuse.fuse-overlayfs rw 0 0",
    ])
    assert locks.os_locks_hold(Path("/results/run"), mounts)
    assert not locks.os_locks_hold(Path("/mnt/bucket/results/s"), mounts)
    assert not locks.os_locks_hold(Path("/mnt/my gcs/s"), mounts)
    assert locks.os_locks_hold(Path("/mnt/nfs/s"), mounts)
    assert not locks.os_locks_hold(Path("/mnt/oldnfs/s"), mounts)
    assert locks.os_locks_hold(Path("/mnt/overlay/s"), mounts)  # a local FUSE: flock holds
    assert locks.os_locks_hold(Path("/mnt/bucketx/s"), mounts)  # a prefix of the name is not the mount

    monkeypatch.setattr(locks, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(locks, "os_locks_hold", lambda folder: False)
    lock = locks.RunLock(tmp_path / "run").acquire()
    try:
        assert lock.lease and (tmp_path / "run" / locks.LEASE_FILE).exists()
        with pytest.raises(UsageError, match="in use by"):
            locks.RunLock(tmp_path / "run").acquire()
    finally:
        lock.release()


def test_the_lease_heartbeat_survives_a_failed_write(tmp_path, monkeypatch):
    """One failed renewal (object storage hiccups) must not end the heartbeat: the lease would
    expire and another command take the folder while this one still writes."""
    real, calls = locks.write_json, []

    def flaky(path, value):
        calls.append(value["heartbeat"])
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(path, value)

    monkeypatch.setattr(locks, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(locks, "write_json", flaky)
    lock = locks.RunLock(tmp_path / "run", lease=True).acquire()
    try:
        deadline = time.time() + 10
        while len(calls) < 4 and time.time() < deadline:
            time.sleep(0.05)
        assert len(calls) >= 4, "the heartbeat stopped at the failed write"
        on_disk = json.loads((tmp_path / "run" / locks.LEASE_FILE).read_text())
        assert on_disk["heartbeat"] > calls[1]
    finally:
        lock.release()
