"""Reading Parquet embedding shards, with one clear error for every malformed input.

Accepted: one Parquet file, a folder of shards (``*.parquet`` below it, sorted; names starting
with ``.`` or ``_`` are skipped), or a glob -- local paths or URIs (``s3://``, ``gs://``,
``file://``: see :mod:`trainers.data.storage`). Columns: ``embedding`` (fixed-size list or list of floats, one dimension for every row) and
``label`` (the truth, 1/0: benchmark mode) and/or ``labelled`` (1 = known positive,
0 = unlabelled: the real PU case). Other columns are ignored.

Reading goes row group by row group into one preallocated array (:func:`read_rows`), so a
data-parallel worker can read rows [start, stop) of the whole set -- its share -- holding only
those rows; float16 embeddings stay float16.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainers.data.storage import is_remote, list_files, local_path, open_input, write_parquet
from trainers.errors import DataError  # noqa: F401 - re-exported: readers raise it

EMBEDDING = "embedding"
LABEL = "label"  # the truth
LABELLED = "labelled"  # 1 = known positive, 0 = unlabelled
GROUP_COLUMNS = ("group", "topic")  # a finer class, where the source has one (20News: its newsgroup)


@dataclass
class EmbeddingTable:
    """Embeddings with whatever labels the data carries (None where it carries none)."""

    x: np.ndarray  # [N, dim] float16 or float32, as stored
    label: np.ndarray | None = None  # truth, int8 0/1
    labelled: np.ndarray | None = None  # int8 0/1
    source: str = "<memory>"
    files: list[str] = field(default_factory=list)
    group: np.ndarray | None = None  # the positives' finer classes (column 'group' or 'topic'), for sar-group

    def __len__(self) -> int:
        return len(self.x)

    @property
    def dim(self) -> int:
        return self.x.shape[1]


def list_shards(path: str | Path) -> list[str]:
    """The Parquet files a path or URI names: a file, a folder of shards, or a glob pattern.
    Local ones come back as paths, remote ones as URIs."""
    return list_files(path, (".parquet",))


def _embedding_matrix(column: pa.ChunkedArray | pa.Array, source: str) -> np.ndarray:
    """[n, dim] in the stored precision: float16 stays float16 (half the memory; trainers cast
    per batch), float32 stays, float64 becomes float32."""
    typ = column.type
    if not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise DataError(source, f"must be a list of floats, found {typ}", EMBEDDING)
    if not pa.types.is_floating(typ.value_type):
        raise DataError(source, f"must hold floats (float16/float32), found {typ.value_type}", EMBEDDING)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise DataError(source, f"{array.null_count} rows have no embedding (null)", EMBEDDING)
    n = len(array)
    if pa.types.is_fixed_size_list(typ):
        dim = typ.list_size
    else:
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        dims = np.unique(lengths)
        if len(dims) > 1:
            raise DataError(source, f"ragged embeddings: rows have dimensions {dims[:5].tolist()}", EMBEDDING)
        dim = int(dims[0]) if len(dims) else 0
    if dim == 0 and n:
        raise DataError(source, "embeddings have dimension 0", EMBEDDING)
    values = array.flatten()
    if values.null_count:
        raise DataError(source, f"{values.null_count} embedding values are null", EMBEDDING)
    matrix = values.to_numpy(zero_copy_only=False)
    if matrix.dtype != np.float16:
        matrix = matrix.astype(np.float32, copy=False)
    matrix = matrix.reshape(n, dim)
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


# -- the layout of a shard set (footers only) and reading any range of its rows --------------------


@dataclass
class Shard:
    source: str
    rows: int
    row_groups: list[int]  # rows per row group
    names: set[str]
    value_type: pa.DataType  # of the embedding lists

    @property
    def has_label(self) -> bool:
        return LABEL in self.names

    @property
    def has_labelled(self) -> bool:
        return LABELLED in self.names


@dataclass
class ShardSet:
    """The shards a path names, with their row counts: what a data-parallel worker needs to
    find its share without reading anyone else's."""

    source: str
    shards: list[Shard]
    need: str

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def dtype(self) -> np.dtype:
        half = all(pa.types.is_float16(s.value_type) for s in self.shards)
        return np.dtype(np.float16 if half else np.float32)

    @property
    def has_label(self) -> bool:
        return self.shards[0].has_label

    @property
    def has_labelled(self) -> bool:
        return self.shards[0].has_labelled

    def columns(self, need: str | None = None) -> list[str]:
        """The label columns read for ``need`` (none: embeddings alone)."""
        need = self.need if need is None else need
        return [] if need == "none" else [c for c in (LABEL, LABELLED) if c in self.shards[0].names]

    @property
    def group_column(self) -> str | None:
        """The first of :data:`GROUP_COLUMNS` that every shard has, if any."""
        return next((c for c in GROUP_COLUMNS if all(c in s.names for s in self.shards)), None)


def parquet_file(source: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(open_input(source))
    except (pa.ArrowException, OSError) as err:
        raise DataError(source, f"cannot read as Parquet (empty, truncated or not Parquet): {err}") from None


def _inspect(source: str, need: str, first: Shard | None) -> Shard:
    meta = parquet_file(source).metadata
    schema = meta.schema.to_arrow_schema()
    names = set(schema.names)
    if EMBEDDING not in names:
        raise DataError(source, f"missing column; found {sorted(names)}", EMBEDDING)
    if meta.num_rows == 0:
        raise DataError(source, "the file has no rows")
    if need == "label" and LABEL not in names:
        raise DataError(source, "missing column: the truth (1/0) is needed here", LABEL)
    if need == "any" and not names & {LABEL, LABELLED}:
        raise DataError(source, f"missing column: need '{LABELLED}' (1 = known positive, 0 = unlabelled) or '{LABEL}' (truth)",
                        LABELLED)
    shard = Shard(source, meta.num_rows, [meta.row_group(i).num_rows for i in range(meta.num_row_groups)], names,
                  schema.field(EMBEDDING).type)
    typ = shard.value_type
    if not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise DataError(source, f"must be a list of floats, found {typ}", EMBEDDING)
    shard.value_type = typ.value_type
    if not pa.types.is_floating(typ.value_type):
        raise DataError(source, f"must hold floats (float16/float32), found {typ.value_type}", EMBEDDING)
    if first is not None and need != "none" and (first.has_label, first.has_labelled) != (shard.has_label, shard.has_labelled):
        missing = LABEL if first.has_label != shard.has_label else LABELLED
        raise DataError(source, f"shards disagree: '{missing}' is in some shards but not in others", missing)
    return shard


def open_shards(path: str | Path, need: str = "any") -> ShardSet:
    """List the shards and read their footers (schema, row counts): no data yet."""
    shards: list[Shard] = []
    for f in list_shards(path):
        shards.append(_inspect(f, need, shards[0] if shards else None))
    return ShardSet(str(path), shards, need)


def _pieces(shards: ShardSet, start: int, stop: int):
    """(shard, row group, first row, last row) of every row group overlapping rows [start, stop)."""
    offset = 0
    for shard in shards.shards:
        for group, n in enumerate(shard.row_groups):
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                yield shard, group, lo - offset, hi - offset
            offset += n


def _read_piece(pf: pq.ParquetFile, shard: Shard, group: int, lo: int, hi: int, labels: list[str], extra=()):
    try:
        table = pf.read_row_group(group, columns=[EMBEDDING, *labels, *extra]).slice(lo, hi - lo)
    except (pa.ArrowException, OSError) as err:
        raise DataError(shard.source, f"cannot read as Parquet (truncated or damaged): {err}") from None
    columns = {c: _binary_column(table.column(c), shard.source, c) for c in labels}
    columns.update({c: table.column(c) for c in extra})
    return _embedding_matrix(table.column(EMBEDDING), shard.source), columns


def iter_row_groups(shards: ShardSet, start: int = 0, stop: int | None = None, extra: tuple[str, ...] = (),
                    keep: np.ndarray | None = None):
    """Yield ``(shard, x, columns)`` per row group overlapping rows [start, stop): the checked
    embeddings (stored precision) and a dict of the label columns and ``extra`` columns. With
    ``keep`` (sorted global row ids), only those rows, and row groups holding none are not read."""
    stop = shards.rows if stop is None else stop
    labels = shards.columns()
    handle = None
    offset = {id(s): o for s, o in zip(shards.shards, np.cumsum([0] + [s.rows for s in shards.shards]))}
    for shard, group, lo, hi in _pieces(shards, start, stop):
        base = int(offset[id(shard)]) + sum(shard.row_groups[:group])
        picked = None
        if keep is not None:
            picked = keep[np.searchsorted(keep, base + lo):np.searchsorted(keep, base + hi)] - base - lo
            if not len(picked):
                continue
        if handle is None or handle[0] is not shard:
            handle = (shard, parquet_file(shard.source))
        matrix, columns = _read_piece(handle[1], shard, group, lo, hi, labels, extra)
        if picked is not None:
            matrix = matrix[picked]
            columns = {c: v[picked] if isinstance(v, np.ndarray) else v.take(picked) for c, v in columns.items()}
        yield shard, matrix, columns


def read_rows(shards: ShardSet, start: int = 0, stop: int | None = None, keep: np.ndarray | None = None) -> EmbeddingTable:
    """Rows [start, stop) of the whole shard set (or just the sorted global row ids ``keep``),
    read row group by row group straight into one array: the memory held is the rows asked
    for, plus one row group in flight."""
    stop = shards.rows if stop is None else stop
    n = stop - start if keep is None else len(keep)
    labels = shards.columns()
    x = None
    columns = {c: np.empty(n, dtype=np.int8) for c in labels}
    group_column = shards.group_column if shards.need != "none" else None
    groups = []
    at = 0
    first_dim = None
    extra = () if group_column is None else (group_column,)
    for shard, matrix, values in iter_row_groups(shards, start, stop, extra=extra, keep=keep):
        if group_column is not None:
            groups.extend(values[group_column].to_pylist())
        if x is None:
            first_dim = (matrix.shape[1], shard.source)
            x = np.empty((n, matrix.shape[1]), dtype=shards.dtype)
        elif matrix.shape[1] != first_dim[0]:
            raise DataError(shard.source, f"dimension {matrix.shape[1]} differs from {first_dim[0]} in {first_dim[1]}",
                            EMBEDDING)
        x[at : at + len(matrix)] = matrix
        for c in labels:
            columns[c][at : at + len(matrix)] = values[c]
        at += len(matrix)
    return EmbeddingTable(
        x=x if x is not None else np.empty((0, 0), dtype=shards.dtype),
        label=columns.get(LABEL),
        labelled=columns.get(LABELLED),
        source=shards.source,
        files=[s.source for s in shards.shards],
        group=np.asarray([str(g) for g in groups]) if group_column is not None else None,
    )


def table_to_arrow(table: EmbeddingTable) -> pa.Table:
    """An EmbeddingTable as a shard (embeddings in their precision, label columns kept)."""
    columns = {EMBEDDING: embeddings_to_arrow(table.x, table.x.dtype if table.x.dtype == np.float16 else np.float32)}
    if table.label is not None:
        columns[LABEL] = pa.array(table.label, pa.int8())
    if table.labelled is not None:
        columns[LABELLED] = pa.array(table.labelled, pa.int8())
    return pa.table(columns)


def read_labels(shards: ShardSet) -> dict[str, np.ndarray]:
    """The label columns of every row (one byte a row), without the embeddings."""
    out = {}
    for c in shards.columns():
        parts = []
        for shard in shards.shards:
            try:
                column = parquet_file(shard.source).read(columns=[c]).column(c)
            except (pa.ArrowException, OSError) as err:
                raise DataError(shard.source, f"cannot read as Parquet (truncated or damaged): {err}") from None
            parts.append(_binary_column(column, shard.source, c))
        out[c] = np.concatenate(parts)
    return out


def read_table(path: str | Path, need: str = "any") -> EmbeddingTable:
    """Read embedding shards (a file, a folder of shards or a glob; a path or a URI).

    ``need``: ``"any"`` (``label`` or ``labelled``, for training), ``"label"`` (the truth is
    required, e.g. for a test split) or ``"none"`` (embeddings alone suffice, e.g. for scoring).
    """
    return read_rows(open_shards(path, need))


def write_shards(
    table: pa.Table, out_dir: str | Path, rows_per_shard: int = 50_000, prefix: str = "part"
) -> list[str]:
    """Write a table as numbered Parquet shards (``part-00000.parquet`` ...) into ``out_dir``
    (a folder or a URI)."""
    from trainers.data.storage import join

    paths = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_shard)):
        p = join(out_dir, f"{prefix}-{i:05d}.parquet")
        write_parquet(table.slice(start, rows_per_shard), p)
        paths.append(p)
    return paths


def embeddings_to_arrow(x: np.ndarray, dtype=np.float32) -> pa.FixedSizeListArray:
    """[N, dim] -> Arrow ``fixed_size_list<float>[dim]`` (float32, or float16 to halve the size),
    the shard format."""
    x = np.ascontiguousarray(x, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def read_records(path: str | Path, text_columns: tuple[str, ...] = ()) -> pa.Table:
    """Read one Parquet, CSV or JSONL (one JSON object per line) file as an Arrow table.

    ``text_columns`` are read as strings where the format guesses types (CSV would turn "123"
    into an integer). Column checks are the caller's: this only fails on unreadable files.
    """
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    p = str(path)
    suffix = Path(p.split("?")[0]).suffix.lower()
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
    if not is_remote(p) and not local_path(p).is_file():
        raise DataError(p, "no such file")
    with open_input(p) as f:
        try:
            return readers[suffix](f)
        except (pa.ArrowException, OSError) as err:
            hint = " (JSON must hold one object per line)" if suffix in (".json", ".jsonl") else ""
            raise DataError(p, f"cannot read as {suffix[1:]}{hint}: {err}") from None
