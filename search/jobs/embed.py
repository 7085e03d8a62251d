"""``lossforge embed`` on a cluster: a Ray Data pipeline, read -> ``map_batches`` with the encoder
in an actor pool (a GPU per actor when the cluster has GPUs) -> ``write_parquet``, resumable.

The input files are embedded in *waves* of a few files. A wave's shards are written to a staging
folder inside ``--out`` (``_wave-NNNNN/``: readers skip names starting with ``_``), then moved
into place as ``part-WWWWW-KKKKK.parquet``, and ``_embed_manifest.json`` records which input
files are done. After a crash the same command continues: finished files are skipped, a
half-written wave is cleared and done again. An ``--out`` that holds anything else is refused.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from trainers.data.storage import (
    GLOB_CHARS,
    filesystem_for,
    folder_is_empty,
    join,
    list_files,
    move,
    read_bytes,
    uri_of,
    write_bytes,
)
from trainers.errors import DataError, UsageError

MANIFEST = "_embed_manifest.json"
FORMATS = (".parquet", ".csv", ".jsonl", ".json")


def _manifest(out: str, spec: dict) -> dict:
    """The run's manifest: a new one for an empty --out, the same run's to continue, else refused."""
    if folder_is_empty(out):
        return {"spec": spec, "done": {}, "waves": 0}
    try:
        manifest = json.loads(read_bytes(join(out, MANIFEST)))
    except DataError:
        raise UsageError(f"--out {out}: already exists and is not an empty folder; refusing to overwrite it") from None
    if manifest.get("spec") != spec:
        raise UsageError(f"--out {out} holds an embedding run with other options ({manifest.get('spec')}); "
                         "use another folder")
    return manifest


def input_root(input_path: str, sources: list[str]) -> str:
    """The folder ``--in`` names its files under (a glob's fixed part, a file's folder, or the
    folder itself), spelt as the sources are, with a trailing "/"."""
    _, path = filesystem_for(input_path)
    if any(ch in path for ch in GLOB_CHARS):
        head = path[: min(path.index(ch) for ch in GLOB_CHARS if ch in path)]
        path = head[: head.rfind("/")]
    elif sources == [uri_of(input_path, path)]:  # --in is one file
        path = path[: path.rfind("/")]
    return uri_of(input_path, path.rstrip("/")) + "/"


def pending_files(sources: list[str], done: dict, root: str) -> tuple[list[str], dict[str, str]]:
    """(files still to embed, each source's manifest key). Keys are relative to the input's root,
    so a project moved between runs continues where it stopped instead of embedding every file
    again beside its old shards; a manifest from before keyed by absolute path still matches."""
    keys = {s: s[len(root):] if s.startswith(root) else s for s in sources}
    return [s for s in sources if keys[s] not in done and s not in done], keys


def _clear_staging(out: str) -> None:
    import pyarrow.fs as pafs

    fs, path = filesystem_for(out)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.base_name.startswith("_wave-") and info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)


def _read(sources: list[str], text_column: str):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import ray.data

    fs, _ = filesystem_for(sources[0])
    paths = [filesystem_for(s)[1] for s in sources]
    suffix = Path(sources[0]).suffix.lower()
    if suffix == ".parquet":
        return ray.data.read_parquet(paths, filesystem=fs, include_paths=True)
    if suffix == ".csv":
        options = pcsv.ConvertOptions(column_types={text_column: pa.string()})
        return ray.data.read_csv(paths, filesystem=fs, include_paths=True, convert_options=options)
    return ray.data.read_json(paths, filesystem=fs, include_paths=True, lines=True)


def _cause(err: BaseException) -> DataError | None:
    """The DataError an encoder actor raised, through Ray's wrappers. Ray Data keeps only the
    worker's traceback text of a user-code error, so the one line is taken from there."""
    import re

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(getattr(err, "cause", None), DataError):
            return err.cause
        found = re.findall(r"trainers\.errors\.DataError: (.+)", str(err))
        if found:
            where, _, message = found[-1].partition(": ")
            return DataError(where, message)
        err = getattr(err, "cause", None) or err.__cause__
    return None


def _wave(sources, out, wave: int, text_column: str, model: str, opts: dict, actors: int, gpus: float) -> list[str]:
    """Embed one wave of files; returns the names of the shards it moved into --out."""
    from trainers.embed import BatchEncoder

    fs, out_path = filesystem_for(out)
    staging = join(out, f"_wave-{wave:05d}")
    ds = _read(sources, text_column).map_batches(
        BatchEncoder, batch_format="pyarrow", batch_size=opts["rows_per_batch"], concurrency=actors,
        num_cpus=opts["cpus_per_actor"], num_gpus=gpus,
        fn_constructor_kwargs={"model_dir": model, "text_column": text_column, "batch_size": opts["batch_size"],
                               "max_length": opts["max_length"], "device": "cuda" if gpus else "cpu",
                               "dtype": opts["dtype"]})
    try:
        ds.write_parquet(filesystem_for(staging)[1], filesystem=fs, max_rows_per_file=opts["rows_per_shard"])
    except Exception as err:  # noqa: BLE001 - a user's bad text is one line; anything else keeps its traceback
        cause = _cause(err)
        if cause is not None:
            raise cause from None
        raise
    names = []
    for k, shard in enumerate(list_files(staging, (".parquet",))):
        name = f"part-{wave:05d}-{k:05d}.parquet"
        move(shard, join(out, name))
        names.append(name)
    fs.delete_dir(filesystem_for(staging)[1])
    return names


def run_embed_job(input_path: str, out: str, text_column: str = "text", model_dir: str | None = None,
                  rows_per_shard: int = 50_000, batch_size: int = 64, max_length: int = 256, dtype: str = "float32",
                  address: str | None = None, actors: int | None = None, cpus_per_actor: float = 1.0,
                  files_per_wave: int | None = None, log=print) -> dict:
    """Embed every input file (a file, a folder or a glob; paths or URIs) into shards in ``out``."""
    import ray

    from search.session.ray_session import start_ray
    from trainers.embed import _resolve_model_dir, check_embed_options

    started = time.perf_counter()
    check_embed_options(rows_per_shard, batch_size, max_length, dtype)
    model = str(_resolve_model_dir(model_dir).resolve())
    sources = list_files(input_path, FORMATS)
    if len({Path(s).suffix.lower() for s in sources}) > 1:
        raise UsageError(f"--in {input_path}: mixes file types; embed one type at a time")
    spec = {"input": str(input_path), "text_column": text_column, "model": model, "dtype": dtype,
            "max_length": max_length}
    manifest = _manifest(out, spec)
    pending, keys = pending_files(sources, manifest["done"], input_root(input_path, sources))
    start_ray(address)
    cpus, gpus = ray.cluster_resources().get("CPU", 1), ray.cluster_resources().get("GPU", 0)
    # Leave a CPU for the read and write tasks: actors holding every CPU would starve them.
    actors = actors or (int(gpus) if gpus else max(1, int(cpus // cpus_per_actor) - 1))
    log(f"embed: {len(sources)} file(s), {len(sources) - len(pending)} already done; {actors} encoder actor(s)"
        f"{' with a GPU each' if gpus else ''} -> {out}")
    _clear_staging(out)
    opts = {"rows_per_shard": rows_per_shard, "batch_size": batch_size, "max_length": max_length, "dtype": dtype,
            "cpus_per_actor": cpus_per_actor, "rows_per_batch": max(batch_size, 256)}
    per_wave = files_per_wave or max(1, 2 * actors)
    for i in range(0, len(pending), per_wave):
        wave = pending[i : i + per_wave]
        names = _wave(wave, out, manifest["waves"], text_column, model, opts, actors, 1.0 if gpus else 0.0)
        manifest["done"].update({keys[s]: names for s in wave})
        manifest["waves"] += 1
        write_bytes(join(out, MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode())
        log(f"  wave {manifest['waves']}: {len(wave)} file(s) -> {len(names)} shard(s)")
    return {"files": len(sources), "embedded_now": len(pending), "seconds": time.perf_counter() - started,
            "shards": sorted({n for names in manifest["done"].values() for n in names})}
