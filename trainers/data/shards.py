"""Reading Parquet embedding shards, with one clear error for every malformed input.

Accepted: one Parquet file, a folder of shards (``*.parquet`` below it, sorted), or a glob.
Columns: ``embedding`` (fixed-size list or list of floats, one dimension for every row) and
``label`` (the truth, 1/0: benchmark mode) and/or ``labelled`` (1 = known positive,
0 = unlabelled: the real PU case). Other columns are ignored.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainers.errors import DataError  # noqa: F401 - re-exported: readers raise it

EMBEDDING = "embedding"
LABEL = "label"  # the truth
LABELLED = "labelled"  # 1 = known positive, 0 = unlabelled


@dataclass
class EmbeddingTable:
    """Embeddings with whatever labels the data carries (None where it carries none)."""

    x: np.ndarray  # [N, dim] float32
    label: np.ndarray | None = None  # truth, int8 0/1
    labelled: np.ndarray | None = None  # int8 0/1
    source: str = "<memory>"
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def dim(self) -> int:
        return self.x.shape[1]


def list_shards(path: str | Path) -> list[Path]:
    """The Parquet files a path names: a file, a folder of shards, or a glob pattern."""
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(text, "the glob matches no files")
        return files
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.parquet") if f.is_file())
        if not files:
            raise DataError(text, "the folder holds no .parquet files")
        return files
    if p.is_file():
        return [p]
    if p.exists():
        raise DataError(text, "not a regular file or folder")
    raise DataError(text, "no such file or folder")


def _embedding_matrix(column: pa.ChunkedArray, source: str) -> np.ndarray:
    typ = column.type
    if not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise DataError(source, f"must be a list of floats, found {typ}", EMBEDDING)
    if not pa.types.is_floating(typ.value_type):
        raise DataError(source, f"must hold floats (float16/float32), found {typ.value_type}", EMBEDDING)
    array = column.combine_chunks()
    if array.null_count:
        raise DataError(source, f"{array.null_count} rows have no embedding (null)", EMBEDDING)
    n = len(array)
    if pa.types.is_fixed_size_list(typ):
        dim = typ.list_size
    else:
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        dims = np.unique(lengths)
        if len(dims) != 1:
            raise DataError(source, f"ragged embeddings: rows have dimensions {dims[:5].tolist()}", EMBEDDING)
        dim = int(dims[0])
    if dim == 0:
        raise DataError(source, "embeddings have dimension 0", EMBEDDING)
    values = array.flatten()
    if values.null_count:
        raise DataError(source, f"{values.null_count} embedding values are null", EMBEDDING)
    matrix = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise DataError(source, f"{int(bad.sum())} rows contain NaN or inf (first at row {int(np.argmax(bad))})", EMBEDDING)
    return matrix


def _binary_column(column: pa.ChunkedArray, source: str, name: str) -> np.ndarray:
    typ = column.type
    if not (pa.types.is_integer(typ) or pa.types.is_boolean(typ) or pa.types.is_floating(typ)):
        raise DataError(source, f"must be 0/1 numbers, found {typ}", name)
    if column.null_count:
        raise DataError(source, f"{column.null_count} rows are null; every row needs 0 or 1", name)
    values = column.to_numpy().astype(np.float64)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        shown = np.unique(values[bad])[:5].tolist()
        raise DataError(source, f"values must be 0 or 1, found {shown}", name)
    return values.astype(np.int8)


def read_table(path: str | Path, need: str = "any") -> EmbeddingTable:
    """Read embedding shards.

    ``need``: ``"any"`` (``label`` or ``labelled``, for training), ``"label"`` (the truth is
    required, e.g. for a test split) or ``"none"`` (embeddings alone suffice, e.g. for scoring).
    """
    files = list_shards(path)
    xs, labels, labelleds = [], [], []
    has_label = has_labelled = None
    dim = None
    for f in files:
        src = str(f)
        try:
            schema = pq.read_schema(f)
            names = set(schema.names)
            wanted = [c for c in (EMBEDDING, LABEL, LABELLED) if c in names]
            table = pq.read_table(f, columns=wanted)
        except (pa.ArrowException, OSError) as err:
            raise DataError(src, f"cannot read as Parquet (empty, truncated or not Parquet): {err}") from None
        if EMBEDDING not in names:
            raise DataError(src, f"missing column; found {sorted(names)}", EMBEDDING)
        if table.num_rows == 0:
            raise DataError(src, "the file has no rows")
        this_label, this_labelled = LABEL in names, LABELLED in names
        if need == "label" and not this_label:
            raise DataError(src, "missing column: the truth (1/0) is needed here", LABEL)
        if need == "any" and not (this_label or this_labelled):
            raise DataError(
                src, f"missing column: need '{LABELLED}' (1 = known positive, 0 = unlabelled) or '{LABEL}' (truth)", LABELLED
            )
        if has_label is None:
            has_label, has_labelled = this_label, this_labelled
        elif need != "none" and (has_label, has_labelled) != (this_label, this_labelled):
            missing = LABEL if has_label != this_label else LABELLED
            raise DataError(src, f"shards disagree: '{missing}' is in some shards but not in others", missing)
        x = _embedding_matrix(table.column(EMBEDDING), src)
        if dim is not None and x.shape[1] != dim:
            raise DataError(src, f"dimension {x.shape[1]} differs from {dim} in {files[0]}", EMBEDDING)
        dim = x.shape[1]
        xs.append(x)
        if this_label and need != "none":
            labels.append(_binary_column(table.column(LABEL), src, LABEL))
        if this_labelled and need != "none":
            labelleds.append(_binary_column(table.column(LABELLED), src, LABELLED))
    return EmbeddingTable(
        x=np.concatenate(xs),
        label=np.concatenate(labels) if labels else None,
        labelled=np.concatenate(labelleds) if labelleds else None,
        source=str(path),
        files=[str(f) for f in files],
    )


def write_shards(
    table: pa.Table, out_dir: str | Path, rows_per_shard: int = 50_000, prefix: str = "part"
) -> list[Path]:
    """Write a table as numbered Parquet shards (``part-00000.parquet`` ...) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_shard)):
        p = out / f"{prefix}-{i:05d}.parquet"
        pq.write_table(table.slice(start, rows_per_shard), p)
        paths.append(p)
    return paths


def embeddings_to_arrow(x: np.ndarray) -> pa.FixedSizeListArray:
    """[N, dim] float32 -> Arrow ``fixed_size_list<float>[dim]``, the shard format."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def read_records(path: str | Path, text_columns: tuple[str, ...] = ()) -> pa.Table:
    """Read one Parquet, CSV or JSONL (one JSON object per line) file as an Arrow table.

    ``text_columns`` are read as strings where the format guesses types (CSV would turn "123"
    into an integer). Column checks are the caller's: this only fails on unreadable files.
    """
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    p = Path(path)
    suffix = p.suffix.lower()
    readers = {
        ".parquet": pq.read_table,
        ".csv": lambda f: pcsv.read_csv(
            f, convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(text_columns, pa.string()))
        ),
        ".jsonl": pjson.read_json,
        ".json": pjson.read_json,
    }
    if suffix not in readers:
        raise DataError(p, f"unknown file type '{suffix}': use .parquet, .csv or .jsonl (one JSON object per line)")
    if not p.is_file():
        raise DataError(p, "no such file")
    try:
        return readers[suffix](p)
    except (pa.ArrowException, OSError) as err:
        hint = " (JSON must hold one object per line)" if suffix in (".json", ".jsonl") else ""
        raise DataError(p, f"cannot read as {suffix[1:]}{hint}: {err}") from None
