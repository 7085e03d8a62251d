"""``lossforge train-dpo``: one preference classifier trained as a Ray Train job, then served.

Layout of ``--out``:
  run.json        the options the run started with (``--resume`` reads them back)
  ray/train-dpo/  the Ray Train run and its per-epoch checkpoints
  scorer/         the trained scorer (load with ``trainers.scorer.PreferenceScorer.load``)
  metrics.json    per-epoch history, validation and test metrics, scoring pairs/s

The data is read here first, so a bad file fails before Ray starts and nothing is written.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from trainers.data.pairs import PreferencePairs, read_pairs
from trainers.dpo import DPOConfig, default_pairs, save_scorer
from trainers.metrics import preference_metrics

RUN_NAME = "train-dpo"
SPEC_FILE = "run.json"
PROGRESS_FILE = "progress.jsonl"


def length_heuristic(pairs: PreferencePairs) -> dict:
    """The baseline every preference model must beat: the longer answer wins."""
    la = [len(t) for t in pairs.a]
    lb = [len(t) for t in pairs.b]
    prob = [1.0 if x > y else 0.0 if x < y else 0.5 for x, y in zip(la, lb)]
    return preference_metrics(prob, pairs.p, pairs.length_controlled())


def score(scorer_folder: str | Path, pairs: PreferencePairs) -> dict:
    """Metrics of a saved scorer on ``pairs``, through the serving path, with pairs/s."""
    from trainers.scorer import PreferenceScorer

    scorer = PreferenceScorer.load(scorer_folder)
    prob, pairs_per_second = scorer.score_pairs(pairs)
    return {**preference_metrics(prob, pairs.p, pairs.length_controlled()), "pairs_per_second": pairs_per_second}


def run_train_dpo(
    cfg: DPOConfig,
    train: str | None,
    test: str | None,
    out: str,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    resume: bool = False,
    address: str | None = None,
    max_failures: int = 2,
    log=print,
) -> dict:
    import torch
    from ray import train as ray_train
    from ray.train.torch import TorchTrainer

    from search.background import every
    from search.tuner import start_ray
    from trainers.loop import RUN_FILE, dpo_worker_loop

    started = time.perf_counter()
    folder = Path(out).expanduser().resolve()
    if resume:
        if not (folder / SPEC_FILE).is_file():
            raise FileNotFoundError(f"no train-dpo run in {folder} to resume")
        spec = json.loads((folder / SPEC_FILE).read_text())
        cfg = DPOConfig(**spec["dpo"])
        train, test, workers = spec["train"], spec["test"], spec["workers"]
        gpus_per_worker, cpus_per_worker = spec["gpus_per_worker"], spec["cpus_per_worker"]
    elif (folder / SPEC_FILE).exists():
        raise FileExistsError(f"{folder} already holds a train-dpo run: add --resume to continue it, or pick another --out")
    cfg.validate()
    if workers < 1 or cpus_per_worker < 0 or gpus_per_worker < 0:
        raise ValueError("--workers must be >= 1 and --cpus/--gpus-per-worker >= 0")
    if gpus_per_worker > 0 and not torch.cuda.is_available() and address is None:
        raise ValueError("--gpus-per-worker > 0 but this machine has no CUDA device (pass --address for a GPU cluster)")
    # Read everything before writing anything.
    if train is None:
        if test is not None:
            raise ValueError("--test needs --train (the built-in default brings its own test split)")
        train_pairs, test_pairs = default_pairs(cfg.seed)
    else:
        train_pairs = read_pairs(train)
        test_pairs = read_pairs(test) if test else None
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        spec = {"dpo": asdict(cfg), "train": None if train is None else str(Path(train).resolve()),
                "test": None if test is None else str(Path(test).resolve()), "workers": workers,
                "gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker}
        (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")

    start_ray(address)
    used = len(train_pairs) if cfg.max_pairs is None else min(cfg.max_pairs, len(train_pairs))
    log(f"train-dpo: {used} of {len(train_pairs)} pairs from {train_pairs.source}, {cfg.mode} mode, loss {cfg.loss}, "
        f"{workers} worker(s) -> {folder}")
    dpo = {k: v for k, v in asdict(cfg).items() if k != "device"}
    trainer = TorchTrainer(
        dpo_worker_loop,
        train_loop_config={"train": spec["train"], "dpo": dpo, "progress": str(folder / PROGRESS_FILE)},
        scaling_config=ray_train.ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker > 0 else {})},
        ),
        run_config=ray_train.RunConfig(
            name=RUN_NAME, storage_path=str(folder / "ray"),
            failure_config=ray_train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray_train.CheckpointConfig(num_to_keep=1),
        ),
    )
    with every(0.5, _progress_printer(folder / PROGRESS_FILE, cfg.epochs, log)):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray Train run ended without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as checkpoint:
        state = torch.load(Path(checkpoint) / RUN_FILE, map_location="cpu", weights_only=False)
    if state["best_state"] is None:
        raise RuntimeError("training diverged in every epoch: no scorer to save (try a lower --lr)")
    save_scorer(folder / "scorer", cfg, state["best_state"], cfg.loss)
    progress = [json.loads(line) for line in (folder / PROGRESS_FILE).read_text().splitlines()] \
        if (folder / PROGRESS_FILE).exists() else []
    metrics = {"config": asdict(cfg), "train": spec["train"], "test": spec["test"], "workers": workers,
               "replicas_in_sync": all(m.get("replicas_in_sync", True) for m in progress),
               "history": state["history"], "best_val_agreement": state["best_agreement"],
               "train_seconds": sum(h.get("train_seconds", 0.0) for h in state["history"])}
    if test_pairs is not None:
        metrics["test"] = score(folder / "scorer", test_pairs)
        metrics["test_length_heuristic"] = length_heuristic(test_pairs)
        t = metrics["test"]
        log(f"test: agreement {t['agreement']:.4f} (length-controlled {t['agreement_lc']:.4f} on {t['pairs_lc']} pairs)"
            f", the longer answer wins {metrics['test_length_heuristic']['agreement']:.4f}; "
            f"scoring {t['pairs_per_second']:.0f} pairs/s")
    metrics["seconds"] = time.perf_counter() - started
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    log(f"scorer saved to {folder / 'scorer'}; metrics in {folder / 'metrics.json'}")
    return metrics


def score_pairs_file(scorer_folder: str, data: str, out: str, batch_size: int = 64, device: str = "cpu") -> dict:
    """Write ``data``'s rows plus ``p_a_model`` = P(a better) to ``out`` (Parquet or JSONL);
    with labels in ``data``, also the agreement. Nothing is written when anything fails."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainers.data.pairs import pairs_from_table
    from trainers.data.shards import read_records
    from trainers.scorer import PreferenceScorer

    target = Path(out)
    if target.suffix.lower() not in (".parquet", ".jsonl"):
        raise ValueError(f"--out must end in .parquet or .jsonl, got {out}")
    table = read_records(data, text_columns=("prompt", "instruction", "chosen", "rejected", "output_a", "output_b"))
    pairs = pairs_from_table(table, str(data), need_labels=False)
    scorer = PreferenceScorer.load(scorer_folder, device=device, batch_size=batch_size)
    prob, pairs_per_second = scorer.score_pairs(pairs)
    result = table.append_column("p_a_model", pa.array(prob, type=pa.float64()))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    if target.suffix.lower() == ".parquet":
        pq.write_table(result, tmp)
    else:
        with open(tmp, "w") as f:
            for row in result.to_pylist():
                f.write(json.dumps(row, default=str) + "\n")
    os.replace(tmp, target)
    summary = {"pairs": len(pairs), "pairs_per_second": pairs_per_second}
    if np.isfinite(pairs.p).all():
        summary.update(preference_metrics(prob, pairs.p, pairs.length_controlled()))
    return summary


def _progress_printer(path: Path, epochs: int, log):
    """A function that prints the epoch lines the rank-0 worker appended to ``progress.jsonl``
    since its last call (lines from before a resume were printed by that earlier run)."""
    seen = [sum(1 for _ in open(path)) if path.exists() else 0]

    def print_new() -> None:
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines[seen[0]:]:
            m = json.loads(line)
            log(f"  epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  val agreement "
                f"{m['val_agreement']:.4f} (length-controlled {m['val_agreement_lc']:.4f})"
                + (f"  [resumed from epoch {m['resumed_from_epoch']}]" if m["resumed_from_epoch"] else ""))
        seen[0] = max(seen[0], len(lines))

    return print_new
