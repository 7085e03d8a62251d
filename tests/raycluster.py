"""Helpers for tests that run real Ray processes: find and kill them by pid."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def session_pids(sid: int) -> list[int]:
    """Every live process in Unix session ``sid`` (a driver started with start_new_session=True
    and every Ray process it spawned, including agents that outlive it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3]: session id; Z: zombie
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, timeout: float = 10.0) -> None:
    """SIGKILL every process of the session (Ray agents ignore SIGTERM) and wait until none is left."""
    _kill_until_gone(lambda: session_pids(sid), timeout)


def _kill_until_gone(find, timeout: float) -> None:
    deadline = time.time() + timeout
    while pids := find():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.time() > deadline:
            raise RuntimeError(f"processes {pids} survived SIGKILL")
        time.sleep(0.3)


def files_growth(*roots: Path):
    """A progress signal for :func:`wait_for`: (files, bytes) under ``roots`` (files or folders),
    which changes while a run advances (logs, checkpoints, evaluation log)."""

    def measure() -> tuple[int, int]:
        count = size = 0
        for root in map(Path, roots):
            for path in [root] if root.is_file() else root.rglob("*") if root.is_dir() else []:
                try:
                    if path.is_file():
                        count, size = count + 1, size + path.stat().st_size
                except OSError:  # removed while we looked
                    pass
        return count, size

    return measure


def wait_for(predicate, timeout: float, what: str, progress=None) -> None:
    """Wait until ``predicate()``. With ``progress`` (e.g. :func:`files_growth`), ``timeout`` is how
    long the work may go *without progress*: the deadline moves each time ``progress()`` changes,
    so a slower or busier machine gets the time it needs while a stuck run still fails."""
    last = progress() if progress else None
    deadline = time.time() + timeout
    while not predicate():
        if progress is not None and (now := progress()) != last:
            last, deadline = now, time.time() + timeout
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f" (no progress in {timeout:.0f} s)" if progress else ""))
        time.sleep(0.3)


def wait_exit(proc: subprocess.Popen, idle: float, progress) -> int:
    """``proc``'s exit code, waiting as long as ``progress()`` keeps changing (fails after ``idle``
    seconds without any)."""
    wait_for(lambda: proc.poll() is not None, idle, f"pid {proc.pid} to finish", progress)
    return proc.returncode


def run_while_progressing(argv: list[str], cwd: Path, log: Path, idle: float, *watched: Path) -> int:
    """Run ``argv`` to its end, output to ``log``; fail only after ``idle`` seconds in which neither
    ``log`` nor ``watched`` changed (a benchmark on a busy machine is slow, not stuck)."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        return wait_exit(proc, idle, files_growth(log, *watched))
    finally:
        if proc.poll() is None:
            proc.kill()


def lossforge(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``lossforge ARGS`` as a driver in its own session, output to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", *args],
        cwd=cwd,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), cmdline)
    return table


def cluster_pids(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (a cluster's --temp-dir), and all their
    descendants: Ray's workers, agents and job drivers are children of its raylets."""
    table = _processes()
    found = {pid for pid, (_, cmd) in table.items() if marker in cmd}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return sorted(found - {os.getpid()})


def kill_cluster(marker: str, timeout: float = 15.0) -> None:
    _kill_until_gone(lambda: cluster_pids(marker), timeout)


def raylet_pids(marker: str) -> list[int]:
    return [pid for pid, (_, cmd) in _processes().items() if marker in cmd and "/raylet/raylet " in cmd]


def process_parent(pid: int) -> int | None:
    entry = _processes().get(pid)
    return None if entry is None else entry[0]


def find_processes(text: str) -> list[int]:
    return [pid for pid, (_, cmd) in _processes().items() if text in cmd]
