"""Sending searches to a Ray cluster through the Jobs API, and following them.

A submitted search runs ``python -m search.cli search ...`` on the cluster's head node with a
runtime environment that carries this project (``working_dir``), so the code that runs is the
code you have. Token authentication is Ray's own: the client reads the token the way Ray does
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, with ``RAY_AUTH_MODE=token``);
a refused request is turned into a message that says which of the two went wrong.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from trainers.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never ship results, checkouts or caches to the cluster.
EXCLUDES = [".git", "**/__pycache__", "*.egg-info", "lossforge_results", ".pytest_cache", "**/.ipynb_checkpoints"]


class ClusterError(InputError):
    """The cluster could not be reached or refused us (a wrong address, token or tunnel: the
    user's to fix, exit 2); the message says what to do."""


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # noqa: BLE001 - Ray raises plain exceptions for HTTP and connection errors
        raise ClusterError(explain(err, address)) from None


def explain(err: Exception, address: str) -> str:
    text = str(err)
    if "401" in text or "Missing authentication token" in text or "Unauthorized" in text:
        return (f"{address} requires a Ray auth token and none was sent: export RAY_AUTH_MODE=token and put the "
                "cluster's token in ~/.ray/auth_token (or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)")
    if "403" in text or "Invalid authentication token" in text or "Forbidden" in text:
        return f"{address} refused the Ray auth token: it is not this cluster's token (check ~/.ray/auth_token)"
    if "Connection" in text or "connect" in text or "Version check returned" in text or "404" in text:
        return f"cannot reach a Ray dashboard at {address} (is the cluster up, and the tunnel `ray dashboard cluster.yaml` open?)"
    return f"{address}: {text.splitlines()[0] if text else type(err).__name__}"


def _call(address: str | None, fn):
    try:
        return fn(client(address))
    except ClusterError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ClusterError(explain(err, address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS)) from None


def job_spec(search_argv: list[str], working_dir: bool = True, env_vars: dict | None = None) -> tuple[str, dict]:
    """(entrypoint, runtime_env) of ``lossforge search SEARCH_ARGV`` as a Ray job."""
    from search.session.ray_session import RAY_ENV

    runtime_env: dict = {"env_vars": {**RAY_ENV, "PYTHONUNBUFFERED": "1", **(env_vars or {})}}
    if working_dir:
        runtime_env.update(working_dir=str(PROJECT_ROOT), excludes=EXCLUDES)
        return "python -m search.cli search " + shlex.join(search_argv), runtime_env
    # The lossforge installed on the cluster: its own console script, found on the head node's
    # PATH -- nothing of this client (its Python, its checkout) leaks into the job.
    return "lossforge search " + shlex.join(search_argv), runtime_env


def submit(address: str | None, search_argv: list[str], working_dir: bool = True, env_vars: dict | None = None) -> str:
    """Submit ``lossforge search SEARCH_ARGV`` as a Ray job; returns the job id."""
    entrypoint, runtime_env = job_spec(search_argv, working_dir, env_vars)
    return _call(address, lambda c: c.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                                  metadata={"lossforge": "search"}))


def list_jobs(address: str | None) -> list:
    return _call(address, lambda c: c.list_jobs())


def status(address: str | None, job_id: str) -> str:
    return str(_call(address, lambda c: c.get_job_status(job_id)))


def logs(address: str | None, job_id: str) -> str:
    return _call(address, lambda c: c.get_job_logs(job_id))


def follow(address: str | None, job_id: str, out=sys.stdout) -> str:
    """Stream a job's logs until it ends; returns its final status."""
    import asyncio

    async def tail(c):
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    _call(address, lambda c: asyncio.run(tail(c)))
    return status(address, job_id)


def stop(address: str | None, job_id: str) -> bool:
    return _call(address, lambda c: c.stop_job(job_id))
