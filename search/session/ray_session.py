"""What every command that runs Ray jobs does the same way: its run folder (spec file, resume,
refusing to overwrite, reading inputs before writing anything), Ray itself (start, bounded
disconnect), and the one place a Ray Train job is built.

The order is the contract: options validated, inputs read, outputs checked -- all before the
first byte is written or Ray starts -- so a bad input costs seconds and leaves nothing behind.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from search.session.lock import hold
from trainers.checkpoints import check_checkpoints
from trainers.errors import DataError, UsageError
from trainers.files import check_writable_folder, read_json, write_json

# Ray Train blocks each report after the first for about this health-check interval (2 s by
# default); packs report once per rung or epoch, so a short interval saves seconds per trial.
# OpenMP threads that wait for work spin by default: on a machine that is busy with something
# else, a worker with 2 threads then ran the re-evaluation 3x slower than alone (measured);
# passive waiting costs a few per cent when the machine is quiet.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "OMP_WAIT_POLICY": "PASSIVE"}


@dataclass
class RunFolder:
    """A command's output folder, marked by its spec file (the options it started with)."""

    path: Path
    spec_file: str
    command: str  # how to continue it, for messages: "lossforge resume NAME", "--resume"

    @property
    def spec_path(self) -> Path:
        return self.path / self.spec_file

    def exists(self) -> bool:
        return self.spec_path.exists()

    def load_spec(self) -> dict:
        if not self.spec_path.is_file():
            raise UsageError(f"nothing to resume in {self.path} (no {self.spec_file})")
        spec = read_json(self.spec_path, "run spec")
        if not isinstance(spec, dict):
            raise DataError(self.spec_path, "not a run spec (the top level is not an object)")
        return spec


def local_run_folder(location: str | Path, flag: str) -> Path:
    """A run folder's path. Its spec, logs and checkpoints are appended to and renamed in place,
    which an object store cannot do, so a URI is refused before any work (rather than written to
    a local folder named ``s3:``)."""
    from trainers.data.storage import is_remote

    if is_remote(location):
        raise UsageError(f"{flag} {location}: a run folder must be a local path (or a shared file system), not a URI; "
                         "--save and --out write to a bucket")
    return Path(location).expanduser().resolve()


def start_run(
    folder: RunFolder,
    resume: bool,
    spec: dict | None,
    read_inputs: Callable[[dict], object],
    inputs: list[str | Path | None] = (),
    flag: str = "--out",
    resumed_runs: list[Path] | None = None,
) -> tuple[dict, object]:
    """The driver skeleton. With ``resume`` the spec comes from the folder, else ``spec`` is new
    and an existing run is refused. ``read_inputs(spec)`` validates and reads everything (it
    raises on bad input); only then is the folder created and the spec written (atomically).
    ``inputs``: the command's input paths, which the run folder (``flag``) may not overlap;
    ``resumed_runs``: the folders whose checkpoints a resume loads (default: the whole folder)."""
    refuse_inputs(str(folder.path), list(inputs), folder=True, flag=flag)
    if resume:
        spec = folder.load_spec()
        # A tampered checkpoint fails here, before a worker would load it.
        check_checkpoints(*(resumed_runs if resumed_runs is not None else [folder.path]))
    else:
        if folder.exists():
            raise UsageError(f"{folder.path} already holds a run: continue it with {folder.command}, or pick another name")
        if folder.path.exists() and not folder.path.is_dir():
            raise UsageError(f"{folder.path} exists and is not a folder")
        if folder.path.is_dir() and any(folder.path.iterdir()):
            raise UsageError(f"{folder.path} exists and is not empty: pick another name (nothing was changed)")
    check_writable_folder(folder.path)
    inputs = read_inputs(spec)
    hold(folder.path)  # one writer: a second command on this folder is refused from here on
    if not resume:
        if folder.exists():  # another command started this run while we read the inputs
            raise UsageError(f"{folder.path} already holds a run: continue it with {folder.command}, or pick another name")
        write_json(folder.spec_path, spec)
    return spec, inputs


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def refuse_inputs(out: str, inputs: list[str | Path | None], folder: bool, flag: str = "--out") -> None:
    """The one overlap check of every command's outputs against all its inputs (data files, model
    folders, loss files, results folders), with or without --overwrite: an output may not be an
    input, lie inside an input folder, or (a folder) hold an input."""
    from trainers.data.storage import normalise

    target = normalise(out)
    for given in filter(None, inputs):
        source = normalise(given)
        if target == source:
            raise UsageError(f"{flag} {out} is an input of this command; refusing to write over it")
        if _inside(target, source) or (folder and _inside(source, target)):
            raise UsageError(f"{flag} {out} overlaps the input {given} of this command; refusing to write there")


def check_output_file(out: str | Path, inputs: list[str | Path | None], overwrite: bool, suffixes: tuple[str, ...] = (),
                      flag: str = "--out"):
    """An output file path (or URI) that is safe to write: not one of the inputs (nor inside one),
    not a folder, with a known suffix, not under a file, and not an existing file without
    ``overwrite``. Returns a Path for a local file, the URI itself for a remote one."""
    import pyarrow.fs as pafs

    from trainers.data.storage import file_type, is_remote, local_path

    refuse_inputs(str(out), inputs, folder=False, flag=flag)
    remote = is_remote(out)
    target = None if remote else local_path(out)
    kind = file_type(out) if remote else (pafs.FileType.Directory if target.is_dir() else
                                          pafs.FileType.File if target.exists() else pafs.FileType.NotFound)
    if kind == pafs.FileType.Directory:
        raise UsageError(f"{flag} {out} is a folder; give a file path")
    if suffixes and Path(str(out).split("?")[0]).suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {out}: must end in {' or '.join(suffixes)}")
    if kind == pafs.FileType.File and not overwrite:
        raise UsageError(f"{flag} {out} already exists; add --overwrite to replace it")
    if remote:
        return str(out)
    check_writable_folder(target.resolve().parent)
    return target


def check_output_folder(out: str | Path, inputs: list[str | Path], overwrite: bool, flag: str = "--out") -> str:
    """An output folder (or URI prefix) that is safe to fill: no overlap with the inputs, not a
    file, and empty (or absent) unless ``overwrite``."""
    import pyarrow.fs as pafs

    from trainers.data.storage import file_type, folder_is_empty, is_remote, local_path

    refuse_inputs(str(out), inputs, folder=True, flag=flag)
    if file_type(out) == pafs.FileType.File:
        raise UsageError(f"{flag} {out} is a file; give a folder")
    if not overwrite and not folder_is_empty(out):
        raise UsageError(f"{flag} {out} already exists and is not empty; add --overwrite or pick another folder")
    if not is_remote(out):
        check_writable_folder(local_path(out).resolve())
    return str(out)


# -- interrupts -------------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM (``ray job stop``, a scheduler): the command stops where it is
    and exits 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    import signal

    for s in (signal.SIGINT, signal.SIGTERM):  # the clean-up that follows is bounded: let it finish
        signal.signal(s, signal.SIG_IGN)
    _RECEIVED.append(signum)
    raise Interrupted(signum)


def received_signal() -> int:
    """The signal that interrupted this command (Ray re-raises a KeyboardInterrupt of its own
    from inside ``ray.get``, without ours): SIGINT if none was caught here."""
    import signal

    return _RECEIVED[-1] if _RECEIVED else int(signal.SIGINT)


def catch_interrupts() -> dict:
    """From now on SIGINT and SIGTERM raise :class:`Interrupted` in the main thread. Tune's own
    SIGINT handler stays off: it ends the trial loop as if the budget were spent, and the search
    would re-evaluate and export from half its budget. Returns the handlers it replaced."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return {}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _CATCHING.append(True)
    _RECEIVED.clear()
    return {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}


_CATCHING: list[bool] = []
_RECEIVED: list[int] = []


# -- Ray --------------------------------------------------------------------------------------------

_STARTED_HERE: list[bool] = []  # True once start_ray connected this process (not a caller's own ray.init)


def ray_started_here() -> bool:
    return bool(_STARTED_HERE)


def on_cluster(address: str | None) -> bool:
    """Whether a command should run on Ray: --address, RAY_ADDRESS, inside a Ray job, or a Ray
    this process already joined. Otherwise small local work stays in-process."""
    import sys

    if address or os.environ.get("RAY_ADDRESS") or "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        return True
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def start_ray(address: str | None, quiet: bool = True) -> None:
    """Join ``address``, or the cluster a Ray job runs in, or start a local cluster."""
    import ray

    if ray.is_initialized():
        return
    _STARTED_HERE.append(True)
    # Quiet: Ray's own notices (token auth turned on, "started a local instance", worker start-up
    # counts) stay in its session logs; our progress lines say what the user needs.
    kwargs = {"log_to_driver": not quiet, "logging_level": logging.ERROR if quiet else logging.INFO}
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # A driver submitted through the Jobs API: `lossforge submit` put RAY_ENV in the job's
        # runtime environment already, and Ray refuses the same variables twice.
        ray.init(**kwargs)
        if _CATCHING:
            catch_interrupts()
        return
    kwargs["runtime_env"] = {"env_vars": dict(RAY_ENV)}
    if address:
        ray.init(address=address, **kwargs)
    else:
        os.environ.update(RAY_ENV)  # a local cluster's processes inherit the driver's environment
        ray.init(include_dashboard=False, **kwargs)
    if _CATCHING:
        catch_interrupts()  # ray.init installed its own SIGTERM handler (exit 15, no clean-up)


def default_concurrency(opts) -> int:
    """Trials (packs) the cluster's CPUs and GPUs hold at once, for ``opts``' resources per trial."""
    import ray

    resources = ray.cluster_resources()
    per_trial_cpu = opts.workers_per_trial * opts.cpus_per_worker
    limits = []
    if per_trial_cpu > 0:
        limits.append(int(resources.get("CPU", 1) // per_trial_cpu))
    if opts.gpus_per_worker > 0:
        limits.append(int(resources.get("GPU", 0) // (opts.workers_per_trial * opts.gpus_per_worker)))
    # An autoscaling cluster may have no room yet: one trial waits for nodes rather than none.
    return max(1, min(limits) if limits else 1)


def stop_ray(timeout: float = 30.0) -> bool:
    """Disconnect from Ray within ``timeout`` seconds; False if it did not finish in time.

    After a node of the cluster died, a driver's disconnect could hang for minutes (seen in the
    node-loss test: the search had finished and written its report 6 minutes earlier). The
    command's work is on disk by then, so the CLI may exit without waiting for it.
    """
    import ray

    if not ray.is_initialized():
        return True
    done = threading.Event()

    def shutdown():
        try:
            ray.shutdown()
        finally:
            done.set()

    threading.Thread(target=shutdown, name="ray-shutdown", daemon=True).start()
    return done.wait(timeout)


@dataclass
class Scaling:
    """Resources of one Ray Train job (a trial's pack, a train-dpo run, a re-evaluation)."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2


def process_group_backend(gpus_per_worker: float) -> str:
    """NCCL for GPU workers where this process sees CUDA, else gloo. Ray's default for GPU workers
    is NCCL, which a torch without CUDA lacks: a cluster that advertises GPUs torch cannot use
    then retries the worker group's start for ever. Gloo also reduces CUDA tensors, so a job
    started where CUDA is absent still works on GPU workers (slower all-reduce, same result)."""
    if gpus_per_worker <= 0:
        return "gloo"
    import torch

    return "nccl" if torch.cuda.is_available() and torch.distributed.is_nccl_available() else "gloo"


def train_job(loop, config: dict, scaling: Scaling, name: str, storage: str, keep: int = 2, callbacks=()):
    """The one place a Ray Train job is built: a TorchTrainer over ``loop`` with ``config``."""
    from ray import train
    from ray.train.torch import TorchConfig, TorchTrainer

    gpus = scaling.gpus_per_worker
    return TorchTrainer(
        loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend=process_group_backend(gpus)),
        scaling_config=train.ScalingConfig(
            num_workers=scaling.workers,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": gpus} if gpus > 0 else {})},
        ),
        run_config=train.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=list(callbacks),
            failure_config=train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=train.CheckpointConfig(num_to_keep=keep),
        ),
    )


def run_single_job(loop, config: dict, scaling: Scaling, folder: Path, run_name: str, progress: Path,
                   printer: Callable[[], None], after_fit: Callable[[], None] = lambda: None) -> dict:
    """The one Ray job driver of the single-job commands (train-dpo, train-pu --workers): ``loop``
    as a Train job under ``folder/ray/run_name`` (same name on --resume: it continues from its
    checkpoint), rank 0's reports appended to ``progress`` and printed as they come by
    ``printer``; then ``after_fit()`` (e.g. raise a worker's data error as the user's), and the
    state the last checkpoint holds."""
    from search.session.background import every
    from search.session.progress import ReportFile
    from trainers.loop import STATE_FILE

    trainer = train_job(loop, config, scaling, run_name, str(folder / "ray"), keep=1, callbacks=[ReportFile(progress)])
    with every(0.5, printer):
        result = trainer.fit()
    after_fit()
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray Train run ended without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as checkpoint:
        from trainers.checkpoints import load_state  # data, never code: no pickle runs here

        return load_state(Path(checkpoint) / STATE_FILE)

