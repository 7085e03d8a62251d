"""``lossforge train-pu --workers W``: one PU classifier trained on the full pool as a Ray Train
job, each worker reading only its share (see ``trainers.loop.pu_worker_loop``).

Layout of ``--run-dir``:
  run.json        the options the run started with (``--resume`` reads them back)
  progress.jsonl  one line per epoch (rank 0's report: loss, validation fitness, per-worker rows,
                  read time and peak memory)
  ray/train-pu/   the Ray Train run and its per-epoch checkpoints
  metrics.json    the history, the final validation and test metrics
The classifier goes to ``--save`` (a folder or URI), as ``train-pu --save`` writes it in-process.

Before anything is written or Ray starts, the driver checks the options, the shards' footers,
the label columns (one byte a row: the labelling and its counts) and the outputs. The
embeddings themselves are read only by the workers, each its share; a bad value found there
(NaN, a ragged row) stops every worker, and the driver reports it as one line and removes the
run folder it had just created.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from search.session.ray_session import Scaling
from search.session.progress import last_report, report_printer
from search.jobs.train_dpo import _absolute
from trainers.boundary import PUTrainJob
from trainers.config import PUConfig
from trainers.errors import DataError, UsageError
from trainers.files import write_json

RUN_NAME = "train-pu"
SPEC_FILE = "run.json"
PROGRESS_FILE = "progress.jsonl"


def _pu_inputs(address: str | None, overwrite: bool, resume: bool):
    """Validate the options, read the footers and label columns, check the outputs."""

    def read(spec: dict):
        from search.session.ray_session import check_output_file, check_output_folder
        from trainers.data.pu import PUData
        from trainers.data.shards import LABEL, LABELLED, EmbeddingTable, open_shards, read_labels, read_table
        from trainers.pu import prior_for, resolve_loss

        import numpy as np

        cfg, scaling = PUConfig(**spec["pu"]), Scaling(**spec["scaling"])
        cfg.validate()
        if scaling.workers < 1 or scaling.cpus_per_worker < 0 or scaling.gpus_per_worker < 0:
            raise UsageError("--workers must be >= 1 and --cpus/--gpus-per-worker >= 0")
        if scaling.gpus_per_worker > 0 and address is None and not torch.cuda.is_available():
            raise UsageError("--gpus-per-worker > 0 but this machine has no CUDA device (pass --address for a GPU cluster)")
        if spec["train"] is None:
            raise UsageError("--workers trains on your data: give --train (a folder of shards, a file or a URI)")
        loss = resolve_loss(cfg.loss)
        if cfg.labelling != "scar" or cfg.val or cfg.val_size:
            raise UsageError("--labelling, --val and --val-size are not supported with --workers yet: "
                             "search and validate in-process (or on a --sample-rows sample), then train here")
        if loss == "oracle":
            raise UsageError("--loss oracle needs the whole truth in one process: train it without --workers")
        inputs = [p for p in (spec["train"], spec["test"]) if p]
        if spec["out"] and not resume:
            check_output_file(spec["out"], inputs, overwrite, (".json",))
        if spec["save"] and not resume:
            check_output_folder(spec["save"], inputs, overwrite, "--save")
        shards = open_shards(spec["train"], "any")
        labels = read_labels(shards)
        whole = EmbeddingTable(np.empty((shards.rows, 0), np.float32), labels.get(LABEL), labels.get(LABELLED),
                               spec["train"])
        prior_for(loss if isinstance(loss, str) else "taylor", cfg, PUData.from_table(whole, cfg.labelled_frac, cfg.seed))
        test = read_table(spec["test"], need="label") if spec["test"] else None
        return loss, shards.rows, test

    return read


def run_train_pu_job(cfg: PUConfig, train: str | None, test: str | None, run_dir: str, save: str | None,
                     scaling: Scaling = Scaling(), resume: bool = False, address: str | None = None,
                     out: str | None = None, overwrite: bool = False, log=print) -> dict:
    """Train (or resume) one classifier as a Ray Train job; save it; score the test set once."""
    from search.session.ray_session import RunFolder, local_run_folder, run_single_job, start_ray, start_run
    from trainers.loop import pu_worker_loop

    started = time.perf_counter()
    folder = RunFolder(local_run_folder(run_dir, "--run-dir"), SPEC_FILE, "the same command with --resume")
    fresh = not resume and not folder.path.exists()
    spec = None if resume else {"pu": asdict(cfg), "train": _absolute(train), "test": _absolute(test),
                                "save": _absolute(save), "out": _absolute(out), "scaling": asdict(scaling)}
    loss_file = cfg.loss if cfg.loss.lower().endswith(".json") else None
    spec, (loss, rows, test_table) = start_run(folder, resume, spec, _pu_inputs(address, overwrite, resume),
                                               [train, test, loss_file], "--run-dir")
    cfg, scaling = PUConfig(**spec["pu"]), Scaling(**spec["scaling"])
    start_ray(address)
    log(f"train-pu: {rows} rows from {spec['train']}, loss {cfg.loss}, {scaling.workers} worker(s), each reading its "
        f"share -> {folder.path}")
    job = PUTrainJob(spec["train"], cfg, loss if isinstance(loss, str) else loss.to_dict())
    progress = folder.path / PROGRESS_FILE

    def raise_data_error() -> None:
        if error := last_report(progress).get("data_error"):
            if fresh:
                shutil.rmtree(folder.path, ignore_errors=True)  # nothing written, as for any bad input
            where, _, message = error.partition(": ")
            raise DataError(where, message)  # the worker's one line, as it said it

    state = run_single_job(pu_worker_loop, {"job": job}, scaling, folder.path, RUN_NAME, progress,
                           _progress_printer(progress, cfg.epochs, log), after_fit=raise_data_error)
    return _finish(folder.path, spec, cfg, loss, state, last_report(progress), test_table, started, log)


def _finish(path: Path, spec: dict, cfg: PUConfig, loss, state: dict, last: dict, test_table, started: float, log) -> dict:
    from trainers.classifier import PUClassifier
    from trainers.metrics import classification_metrics
    from trainers.pu import classifier_meta, finalise

    final = state["final"]
    metrics = {"status": final["status"], "loss": cfg.loss, "fitness": cfg.fitness, "val_fitness": final["val_fitness"],
               "threshold_logit": final["threshold_logit"], "epoch_used": final["epoch_used"],
               "prior_used": final["prior_used"], "train": spec["train"], "test": spec["test"], "config": asdict(cfg),
               "workers": last.get("workers", []), "history": state.get("history", []),
               "replicas_in_sync": all(h.get("replicas_in_sync", False) for h in state.get("history", [])),
               **{k: last.get(k) for k in ("n_rows", "n_train_unlabelled", "n_train_positive", "n_val")}}
    classifier = None
    if final["status"] == "ok":
        meta = classifier_meta(loss, cfg, val_fitness=final["val_fitness"], train=spec["train"],
                               n_train=last.get("n_rows"), epoch_used=final["epoch_used"], workers=len(metrics["workers"]))
        classifier = PUClassifier.from_selector_state(state["population"]["selector"], 0, final["threshold_logit"], meta)
        metrics["threshold"] = classifier.threshold
        if test_table is not None:
            scores = classifier.logits(test_table.x)
            metrics.update({f"test_{k}": v for k, v in classification_metrics(scores, test_table.label,
                                                                                final["threshold_logit"]).items()})
            log("test  " + "  ".join(f"{k} {metrics['test_' + k]:.4f}" for k in ("f1", "auc", "accuracy")))
    metrics["seconds"] = time.perf_counter() - started
    write_json(path / "metrics.json", metrics)
    finalise(metrics, classifier, spec["save"], spec["out"], log)
    log(f"validation {cfg.fitness} {final['val_fitness']:.4f}; metrics in {path / 'metrics.json'}")
    return metrics


def _progress_printer(path: Path, epochs: int, log):
    """Prints the epoch lines appended to ``progress.jsonl`` since its last call."""

    def line(m: dict) -> str | None:
        if "epoch" not in m or m.get("finished"):
            return None
        rows = "/".join(str(w["rows"]) for w in m.get("workers", []))
        return (f"  epoch {m['epoch']}/{epochs}  loss {m['loss']:.4f}  val fitness {m['val_fitness']:.4f}  "
                f"{m['epoch_seconds']:.1f} s  rows per worker {rows}"
                + (f"  [resumed from epoch {m['resumed_from_epoch']}]" if m["resumed_from_epoch"] else ""))

    return report_printer(path, line, log)
