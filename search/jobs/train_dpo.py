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
import torch

from search.session.ray_session import Scaling
from search.session.progress import report_printer
from trainers.data.pairs import PreferencePairs, read_pairs, split_by_prompt
from trainers.dpo import DPOConfig, default_pairs, diverged, save_scorer
from trainers.errors import UsageError
from trainers.files import write_json
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


def run_train_dpo(cfg: DPOConfig, train: str | None, test: str | None, out: str, scaling: Scaling = Scaling(),
                  resume: bool = False, address: str | None = None, log=print) -> dict:
    """Train (or resume) a preference classifier as a Ray Train job, save its scorer, score the test pairs."""
    from search.session.ray_session import RunFolder, local_run_folder, run_single_job, start_ray, start_run

    started = time.perf_counter()
    folder = RunFolder(local_run_folder(out, "--out"), SPEC_FILE, "the same command with --resume")
    spec = None if resume else {"dpo": asdict(cfg), "train": _absolute(train), "test": _absolute(test),
                                "scaling": asdict(scaling)}
    loss_file = cfg.loss if cfg.loss.lower().endswith(".json") else None
    spec, (train_pairs, test_pairs) = start_run(folder, resume, spec, _dpo_inputs(address),
                                                [train, test, cfg.model, loss_file])
    cfg, scaling = DPOConfig(**spec["dpo"]), Scaling(**spec["scaling"])
    start_ray(address)
    used = len(train_pairs) if cfg.max_pairs is None else min(cfg.max_pairs, len(train_pairs))
    log(f"train-dpo: {used} of {len(train_pairs)} pairs from {train_pairs.source}, {cfg.mode} mode, loss {cfg.loss}, "
        f"{scaling.workers} worker(s) -> {folder.path}")
    progress = folder.path / PROGRESS_FILE
    state = run_single_job(worker_loop(cfg.mode), {"dpo": cfg, "train": spec["train"]}, scaling, folder.path, RUN_NAME,
                           progress, _progress_printer(progress, cfg.epochs, log))
    if diverged(state["best_state"], state["history"]):
        raise UsageError(f"training diverged (a non-finite loss or validation) at --lr {cfg.lr:g}: no scorer was saved; "
                         f"lower --lr and run again with a new --out ({folder.path} keeps its progress.jsonl)")
    save_trained_scorer(folder.path / "scorer", cfg, state["best_state"])
    metrics = {"config": asdict(cfg), "train": spec["train"], "test": spec["test"], "workers": scaling.workers,
               "replicas_in_sync": all(h.get("replicas_in_sync", False) for h in state["history"]),
               "history": state["history"], "best_val_agreement": state["best_agreement"],
               "train_seconds": sum(h.get("train_seconds", 0.0) for h in state["history"])}
    last = state["history"][-1] if state["history"] else {}
    metrics.update({k: last[k] for k in SPEED_KEYS if k in last})
    if test_pairs is not None:
        metrics.update(test_metrics(folder.path / "scorer", test_pairs, log, train_pairs))
    metrics["seconds"] = time.perf_counter() - started
    write_json(folder.path / "metrics.json", metrics)
    log(f"scorer saved to {folder.path / 'scorer'}; metrics in {folder.path / 'metrics.json'}")
    return metrics


def worker_loop(mode: str):
    """The Ray Train loop of a preference mode: the judges that read both answers (pair mode caches)
    checkpoint inside epochs."""
    from trainers.judges import JUDGES
    from trainers.loop import dpo_worker_loop, pair_worker_loop

    return pair_worker_loop if mode in JUDGES else dpo_worker_loop


def save_trained_scorer(folder: Path, cfg: DPOConfig, best_state: dict) -> None:
    from trainers.dpo import reward_scale
    from trainers.judges import JUDGES

    if cfg.mode not in JUDGES:
        save_scorer(folder, cfg, best_state, cfg.loss)
        return
    JUDGES[cfg.mode].save(folder, cfg, best_state, {"format_version": 1, "loss": cfg.loss, "beta": cfg.effective_beta,
                                               "reward_scale": reward_scale(cfg.loss, cfg.effective_beta),
                                               "base_model": cfg.model or "builtin-tiny"})


def _absolute(path: str | None) -> str | None:
    """Local paths made absolute (workers run elsewhere); URIs as given."""
    from trainers.data.storage import normalise

    return None if path is None else normalise(path)


def _dpo_inputs(address: str | None):
    """Validate the options and read the pairs (and check the model folder) before anything is written."""

    def read(spec: dict):
        from trainers.files import check_writable_folder
        from trainers.models.preference import check_preference_model

        cfg, scaling = DPOConfig(**spec["dpo"]), Scaling(**spec["scaling"])
        cfg.validate()
        if scaling.workers < 1 or scaling.cpus_per_worker < 0 or scaling.gpus_per_worker < 0:
            raise UsageError("--workers must be >= 1 and --cpus/--gpus-per-worker >= 0")
        cfg.check_workers(scaling.workers)
        if scaling.gpus_per_worker > 0 and address is None:
            if not torch.cuda.is_available():
                raise UsageError("--gpus-per-worker > 0 but this machine has no CUDA device (pass --address for a GPU cluster)")
        check_preference_model(cfg)
        if cfg.mode == "pair" and address is None:  # on a cluster the cache lives on the workers' machines
            try:
                check_writable_folder(cfg.cache_dir)
            except UsageError as err:
                raise UsageError(f"--cache-dir: {err}") from None
        if spec["train"] is None:
            if spec["test"] is not None:
                raise UsageError("--test needs --train (the built-in default brings its own test split)")
            return default_pairs(cfg.seed)
        train = read_pairs(spec["train"])
        split_by_prompt(train, cfg.val_frac, cfg.seed)  # too few pairs or prompts to validate: fails here
        return train, read_pairs(spec["test"]) if spec["test"] else None

    return read


# Pair mode's speeds, copied from the last epoch into metrics.json's top level.
SPEED_KEYS = ("train_pairs_per_second", "caching_texts_per_second", "cache_seconds", "computed", "texts",
              "truncated_texts", "threads")


def test_metrics(scorer: Path, test_pairs: PreferencePairs, log, train_pairs: PreferencePairs | None = None) -> dict:
    """The scorer on the test pairs (from raw text), next to "the longer answer wins" and, with
    the training pairs, the length + format logistic regression fitted on them."""
    from transformers import AutoTokenizer

    from trainers.pair import length_format_rule

    out = {"test": score(scorer, test_pairs), "test_length_heuristic": length_heuristic(test_pairs)}
    if train_pairs is not None:
        tokenizer = AutoTokenizer.from_pretrained(scorer, local_files_only=True)
        out["test_length_format_rule"] = length_format_rule(train_pairs, test_pairs, tokenizer)
    t, rules = out["test"], [("the longer answer wins", out["test_length_heuristic"])]
    if "test_length_format_rule" in out:
        rules.append(("length + format rule", out["test_length_format_rule"]))
    log(f"test: agreement {t['agreement']:.4f} (length-controlled {t['agreement_lc']:.4f} on {t['pairs_lc']} pairs); "
        + "; ".join(f"{name} {r['agreement']:.4f} ({r['agreement_lc']:.4f})" for name, r in rules)
        + f"; scoring {t['pairs_per_second']:.1f} pairs/s from raw text")
    return out


def score_pairs_file(scorer_folder: str, data: str, out: str, batch_size: int = 64, device: str = "auto",
                     overwrite: bool = False) -> dict:
    """Write ``data``'s rows plus ``p_a_model`` = P(a better) to ``out`` (Parquet or JSONL);
    with labels in ``data``, also the agreement. Nothing is written when anything fails."""
    import pyarrow as pa

    from search.session.ray_session import check_output_file
    from trainers.data.storage import write_bytes, write_parquet
    from trainers.data.pairs import pairs_from_table
    from trainers.data.shards import read_records
    from trainers.scorer import PreferenceScorer, check_batch_size, serving_device

    check_batch_size(batch_size)  # both before reading anything
    serving_device(device)
    target = check_output_file(out, [data, scorer_folder], overwrite, (".parquet", ".jsonl"))
    table = read_records(data, text_columns=("prompt", "instruction", "chosen", "rejected", "output_a", "output_b"))
    pairs = pairs_from_table(table, str(data), need_labels=False)
    scorer = PreferenceScorer.load(scorer_folder, device=device, batch_size=batch_size)
    prob, pairs_per_second = scorer.score_pairs(pairs)
    result = table.append_column("p_a_model", pa.array(prob, type=pa.float64()))
    if str(target).lower().endswith(".parquet"):
        write_parquet(result, target)
    else:  # JSONL
        write_bytes(target, "".join(json.dumps(row, default=str) + "\n" for row in result.to_pylist()).encode())
    summary = {"pairs": len(pairs), "pairs_per_second": pairs_per_second}
    if np.isfinite(pairs.p).all():
        summary.update(preference_metrics(prob, pairs.p, pairs.length_controlled()))
    return summary


def _progress_printer(path: Path, epochs: int, log):
    """Prints the epoch lines appended to ``progress.jsonl`` since its last call."""

    def line(m: dict) -> str:
        if m.get("phase") in ("caching", "training"):
            what = "texts cached" if m["phase"] == "caching" else f"epoch {m['epoch']}/{epochs}: pairs"
            rate = m.get("texts_per_second", m.get("train_pairs_per_second", 0.0))
            loss = f"  loss {m['train_loss']:.4f}" if "train_loss" in m else ""
            resumed = f"  [resumed at epoch {m['resumed_from_epoch'] + 1} step {m['resumed_from_step']}]" \
                if m.get("resumed_from_step") else ""
            return f"  {what} {m['done']}/{m['total']}  {rate:.1f}/s{loss}  ETA {m['eta_seconds'] / 60:.1f} min{resumed}"
        if m.get("phase") == "checkpoint":
            return None
        if m.get("status") == "diverged":  # a diverged epoch has no agreement to show
            return f"  epoch {m['epoch']}/{epochs}  diverged: the loss or the weights went non-finite"
        return (f"  epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  val agreement "
                f"{m['agreement']:.4f} (length-controlled {m['agreement_lc']:.4f})"
                + (f"  [resumed from epoch {m['resumed_from_epoch']}]" if m["resumed_from_epoch"] else ""))

    return report_printer(path, line, log)
