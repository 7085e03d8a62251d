"""A real 3-node Ray cluster on loopback (`ray start`, token auth on): searches that lose a node
or their driver and carry on, and clients without the token refused. Every process the tests
start is killed by pid at the end."""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from raycluster import REPO, files_growth, find_processes, kill_cluster, process_parent, raylet_pids, wait_exit, wait_for

from search.engine.evaluations import EvaluationLog
from trainers.boundary import PackReport

pytestmark = pytest.mark.slow
NODE = ["--memory=2000000000", "--object-store-memory=150000000", "--disable-usage-stats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path):
        # A short temp dir: Ray's socket paths must stay under the Unix limit; it also marks
        # every process of this cluster for the clean-up.
        self.temp_dir = tempfile.mkdtemp(prefix="lfc", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.token_file = root / "token"
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file),
                    "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
        self.env.pop("RAY_ADDRESS", None)
        self.env["PYTHONPATH"] = str(REPO) + os.pathsep + self.env.get("PYTHONPATH", "")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def ray(self, *args):
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self):
        self.ray("start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                 "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                 # No CPU on the head: every Train worker runs on a worker node, so the node-loss test
                 # always has a node to kill (with one CPU each, a busy machine's packs could all
                 # land on the head and the search finish with nothing killed).
                 "--num-cpus=0", *NODE)
        self.head_raylets = set(raylet_pids(self.temp_dir))
        for _ in range(2):
            self.ray("start", f"--address={self.address}", "--node-ip-address=127.0.0.1", "--num-cpus=1", *NODE)
        deadline = time.time() + 60
        while len(raylet_pids(self.temp_dir)) < 3:
            assert time.time() < deadline, "worker nodes did not come up"
            time.sleep(0.5)

    def lossforge(self, *args, log: Path, env=None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "search.cli", *args], env=env or self.env,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, *args, env=None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "search.cli", *args], env=env or self.env,
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        kill_cluster(c.temp_dir)


def train_worker_on_a_worker_node(cluster) -> int | None:
    """The raylet pid of a worker node that hosts a running Ray Train worker, if any."""
    for pid in find_processes("ray::RayTrainWorker"):
        raylet = process_parent(pid)
        if raylet in raylet_pids(cluster.temp_dir) and raylet not in cluster.head_raylets:
            return raylet
    return None


def test_losing_a_node_restarts_the_pack_from_its_checkpoint(cluster, tmp_path):
    # Once in three runs the driver's Ray disconnect hung for minutes after the search had
    # finished (a dead node's raylet); the CLI now bounds it at 30 s (search.engine.driver.stop_ray).
    log = EvaluationLog(tmp_path / "node")
    driver = cluster.lossforge("search", "--address", cluster.address, "--name", "node", "--storage", str(tmp_path),
                               "--budget", "6", "--pack", "2", "--epochs", "10", "--concurrency", "1",
                               "--max-failures", "2", "--reevaluate", "0", log=tmp_path / "node.log")
    try:
        victim, victim_pack = None, None

        def running_pack_has_a_checkpoint_on_a_worker_node():
            nonlocal victim, victim_pack
            assert driver.poll() is None, "the search ended before a pack with a checkpoint ran on a worker node:\n" + \
                (tmp_path / "node.log").read_text()[-3000:]
            told = {e.id for e in log.told()}
            running = {e.pack for e in log.evaluations() if e.id not in told}
            if len(running) != 1:
                return False
            (pack,) = running
            if not list((tmp_path / "node" / "train").glob(f"pack-{pack:05d}/checkpoint_*")):
                return False
            victim, victim_pack = train_worker_on_a_worker_node(cluster), pack
            return victim is not None

        progress = files_growth(tmp_path / "node", tmp_path / "node.log")
        wait_for(running_pack_has_a_checkpoint_on_a_worker_node, 400, "a running pack with a checkpoint on a worker node",
                 progress)
        os.kill(victim, signal.SIGKILL)  # the node's raylet: the node is gone
        assert wait_exit(driver, 420, progress) == 0, (tmp_path / "node.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    told = log.told()
    assert sorted(e.id for e in told) == list(range(6)) and all(e.status in ("ok", "rejected") for e in told)
    progress = [json.loads(line) for p in (tmp_path / "node").glob("tune-*/*/result.json") for line in open(p)]
    reports = [(r.get("config", {}).get("pack"), PackReport.from_dict(r)) for r in progress]
    resumed = [rep for pack, rep in reports if pack == victim_pack and rep is not None and rep.resumed_from > 0]
    assert resumed, f"pack {victim_pack} resumed from its checkpoint"


def test_submitted_search_survives_its_driver(cluster, tmp_path):
    storage = str(tmp_path)
    args = ["--address", cluster.dashboard, "--no-working-dir", "--name", "job", "--storage", storage,
            "--budget", "6", "--pack", "2", "--epochs", "3", "--concurrency", "1", "--reevaluate", "0"]
    out = cluster.run("submit", *args)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split("submitted job ")[1].split(":")[0]
    log = EvaluationLog(tmp_path / "job")
    wait_for(lambda: len(log.told()) >= 2, 240, "the first pack of the submitted search", files_growth(tmp_path / "job"))
    # The job's driver: the python process itself, not the shell the job supervisor wraps it in.
    # --no-working-dir runs the cluster's own console script: `lossforge search ...`.
    (driver,) = [p for p in find_processes("lossforge")
                 if "lossforge\0search\0" in open(f"/proc/{p}/cmdline").read()
                 and "--name\0job" in open(f"/proc/{p}/cmdline").read()]
    os.kill(driver, signal.SIGKILL)
    wait_for(lambda: "FAILED" in cluster.run("jobs", "--address", cluster.dashboard).stdout, 60, "the job to fail")
    assert len(log.told()) < 6

    # The resumed job's own time is bounded by its progress (results folder and streamed log), not
    # by a fixed limit: on a slow or busy machine it may take minutes and still be fine.
    follow = cluster.lossforge("submit", *args, "--resume", "--follow", log=tmp_path / "follow.log")
    followed = wait_exit(follow, 240, files_growth(tmp_path / "job", tmp_path / "follow.log"))
    out = subprocess.CompletedProcess(follow.args, followed, (tmp_path / "follow.log").read_text(), "")
    assert out.returncode == 0, out.stdout[-3000:]
    tells = [e["id"] for e in log.events() if e["event"] == "tell"]
    assert sorted(tells) == list(range(6)), "exactly the budget, none twice"
    assert job_id in cluster.run("jobs", "--address", cluster.dashboard).stdout
    assert "6/6 evaluated" in cluster.run("logs", job_id, "--address", cluster.dashboard).stdout + out.stdout


def test_clients_without_the_token_are_refused(cluster, tmp_path):
    no_token = {**cluster.env, "RAY_AUTH_MODE": "disabled"}
    no_token.pop("RAY_AUTH_TOKEN_PATH")
    out = cluster.run("jobs", "--address", cluster.dashboard, env=no_token)
    assert out.returncode == 2 and "requires a Ray auth token" in out.stderr, out.stderr  # the user's to fix
    wrong = {**cluster.env, "RAY_AUTH_TOKEN": "0" * 64}
    wrong.pop("RAY_AUTH_TOKEN_PATH")
    out = cluster.run("jobs", "--address", cluster.dashboard, env=wrong)
    assert out.returncode == 2 and "refused the Ray auth token" in out.stderr, out.stderr
    # the core protocol too: a driver with the wrong token cannot join
    probe = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{cluster.address}')"],
                           env=wrong, capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0
    # and with the right token, it works
    assert cluster.run("jobs", "--address", cluster.dashboard).returncode == 0
