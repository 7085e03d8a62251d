"""``lossforge predict``: a saved PU classifier scores embedding shards, in this process or, on a
cluster, as one Ray task per shard.

``--out`` ending in ``.parquet`` is one file (the shards' rows in order); anything else is a
folder holding ``part-NNNNN.parquet`` for input shard N. Everything is checked before any work:
the model folder, every shard's footer (columns, dimension), and the output (not an input, not
overwritten without ``--overwrite``). A shard's output is written whole or not at all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from search.session.ray_session import on_cluster
from trainers.classifier import PUClassifier, check_scorable, score_shard
from trainers.data.shards import open_shards
from trainers.data.storage import join, list_files, write_parquet
from trainers.errors import DataError


@dataclass
class ShardJob:
    """One shard's work, as it crosses the Ray boundary."""

    classifier: PUClassifier
    source: str
    target: str | None  # None: return the table to the driver
    id_column: str | None


def score_one(job: ShardJob):
    table = score_shard(job.classifier, job.source, job.id_column)
    if job.target is None:
        return table
    write_parquet(table, job.target)
    return table.select(["prediction"])


def _targets(out: str, sources: list[str], data: str, overwrite: bool, model: str) -> list[str | None]:
    from search.session.ray_session import check_output_file, check_output_folder

    if out.lower().endswith(".parquet"):
        check_output_file(out, [data, model, *sources], overwrite, (".parquet",))
        return [None] * len(sources)
    check_output_folder(out, [data, model, *sources], overwrite)
    return [join(out, f"part-{i:05d}.parquet") for i in range(len(sources))]


def run_predict(model: str, data: str, out: str, id_column: str | None = None, overwrite: bool = False,
                address: str | None = None) -> dict:
    started = time.perf_counter()
    classifier = PUClassifier.load(model)
    shards = open_shards(data, "none")
    check_scorable(classifier, shards, id_column)
    sources = [s.source for s in shards.shards]
    targets = _targets(str(out), sources, str(data), overwrite, str(model))
    if targets[0] is not None and overwrite:
        _remove_stale_parts(str(out), len(sources))
    jobs = [ShardJob(classifier, s, t, id_column) for s, t in zip(sources, targets)]
    on_ray = on_cluster(address)
    results = _run_on_ray(jobs, address) if on_ray else [score_one(job) for job in jobs]
    if targets[0] is None:
        write_parquet(pa.concat_tables(results), out)
    rows = sum(r.num_rows for r in results)
    positive = sum(int(pc.sum(r.column("prediction")).as_py() or 0) for r in results)
    seconds = time.perf_counter() - started
    return {"rows": rows, "shards": len(jobs), "positive": positive, "seconds": seconds,
            "rows_per_second": rows / max(seconds, 1e-9), "ray": on_ray}


def _remove_stale_parts(out: str, keep: int) -> None:
    """With --overwrite, shards numbered past this run's from an earlier prediction into the
    same folder go (they would be read back as if this run wrote them)."""
    import pyarrow.fs as pafs

    from trainers.data.storage import delete_file, file_type, folder_is_empty

    if file_type(out) != pafs.FileType.Directory or folder_is_empty(out):
        return
    try:
        existing = list_files(out, (".parquet",))
    except DataError:  # a folder holding no shards
        return
    for path in existing:
        name = path.rsplit("/", 1)[-1]
        if name.startswith("part-") and name[5:10].isdigit() and int(name[5:10]) >= keep:
            delete_file(path)


def _run_on_ray(jobs: list[ShardJob], address: str | None) -> list[pa.Table]:
    """One task per shard; a DataError inside a task comes back as that one line."""
    import ray

    from search.session.ray_session import start_ray

    start_ray(address)
    task = ray.remote(num_cpus=1)(score_one)
    try:
        return ray.get([task.remote(job) for job in jobs])
    except DataError as err:  # Ray raises the task's error as a subclass of its own class
        raise getattr(err, "cause", None) or DataError(jobs[0].source, str(err).splitlines()[-1]) from None
