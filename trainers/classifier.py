"""A trained PU classifier you can keep: the selector's weights, its threshold, its loss and
its configuration, in one folder (a path or a URI), and scoring with numpy alone.

    clf = PUClassifier.load("runs/my-classifier")
    clf.scores(x)      # P(positive)-like scores in (0, 1), float64 [N]
    clf.predict(x)     # 0/1 at the shared threshold (recall ~0.9 on labelled validation positives)

Folder layout: ``model.safetensors`` (layer ``i``: ``weight.i`` [in, out], ``bias.i`` [out]),
``classifier.json`` (format, dimension, layers, threshold, loss, config, validation fitness).
No torch and no Ray: it loads anywhere, and a Ray task ships it as a plain dataclass.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainers.data.storage import join, read_bytes, write_bytes
from trainers.errors import DataError, UsageError

FORMAT = "lossforge-pu-classifier"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "classifier.json"
REQUIRED = ("format", "version", "dim", "layers", "threshold_logit")


@dataclass
class PUClassifier:
    weights: list[np.ndarray]  # per layer [in, out] float32
    biases: list[np.ndarray]  # per layer [out]
    threshold_logit: float
    meta: dict = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def dim(self) -> int:
        return self.weights[0].shape[0]

    @property
    def threshold(self) -> float:
        return float(1.0 / (1.0 + np.exp(-self.threshold_logit)))

    @classmethod
    def from_population(cls, pop, member: int, threshold_logit: float, meta: dict) -> "PUClassifier":
        """Member ``member``'s selector of a trained :class:`trainers.pu.Population`."""
        return cls.from_selector_state(pop.selector.state_dict(), member, threshold_logit, meta)

    @classmethod
    def from_selector_state(cls, state: dict, member: int, threshold_logit: float, meta: dict) -> "PUClassifier":
        """From a selector's ``state_dict`` (stacked ``weights.i`` [K, in, out], ``biases.i``
        [K, 1, out]), e.g. out of a Ray Train checkpoint."""
        layers = len([k for k in state if k.startswith("weights.")])
        weights = [state[f"weights.{i}"].detach()[member].cpu().float().numpy() for i in range(layers)]
        biases = [state[f"biases.{i}"].detach()[member, 0].cpu().float().numpy() for i in range(layers)]
        return cls(weights, biases, float(threshold_logit), dict(meta))

    # -- scoring ---------------------------------------------------------------------------------

    def logits(self, x, chunk: int = 65_536) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            found = x.shape[1] if x.ndim == 2 else f"an array of shape {x.shape}"
            raise DataError(self.source, f"embeddings have dimension {found}, the classifier expects {self.dim}", "embedding")
        out = np.empty(len(x), dtype=np.float64)
        last = len(self.weights) - 1
        for start in range(0, len(x), chunk):
            h = x[start : start + chunk].astype(np.float32)  # cast per chunk: float16 data stays small
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                h = h @ w + b
                if i < last:
                    np.maximum(h, 0.0, out=h)
            out[start : start + chunk] = h[:, 0]
        return out

    def scores(self, x) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(x)))

    def predict(self, x) -> np.ndarray:
        """1 where the score reaches the threshold (the rule every method shares), else 0."""
        return (self.logits(x) >= self.threshold_logit).astype(np.int8)

    # -- the folder ------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write the two files (each written whole: locally renamed into place, remotely one PUT);
        the weights go first, so a folder with ``classifier.json`` is complete."""
        from safetensors.numpy import save

        tensors = {f"weight.{i}": np.ascontiguousarray(w, np.float32) for i, w in enumerate(self.weights)}
        tensors.update({f"bias.{i}": np.ascontiguousarray(b, np.float32) for i, b in enumerate(self.biases)})
        meta = {**self.meta, "format": FORMAT, "version": VERSION, "dim": self.dim, "layers": len(self.weights),
                "threshold_logit": self.threshold_logit, "threshold": self.threshold}
        write_bytes(join(folder, WEIGHTS_FILE), save(tensors))
        write_bytes(join(folder, META_FILE), (json.dumps(meta, indent=2, default=float) + "\n").encode())

    @classmethod
    def load(cls, folder: str | Path) -> "PUClassifier":
        """Read a saved classifier; a missing, foreign, damaged or inconsistent folder is one
        DataError naming the file and the field."""
        meta_path, weights_path = join(folder, META_FILE), join(folder, WEIGHTS_FILE)
        meta = _read_meta(meta_path)
        tensors = _read_weights(weights_path)
        weights, biases = [], []
        for i in range(meta["layers"]):
            for key in (f"weight.{i}", f"bias.{i}"):
                if key not in tensors:
                    raise DataError(weights_path, f"missing tensor (found {sorted(tensors)})", key, kind="tensor")
            w, b = tensors[f"weight.{i}"], tensors[f"bias.{i}"]
            expected_in = meta["dim"] if i == 0 else weights[-1].shape[1]
            if w.ndim != 2 or w.shape[0] != expected_in or b.shape != (w.shape[1],):
                raise DataError(weights_path, f"shape {list(w.shape)} / bias {list(b.shape)} does not follow from "
                                              f"dim {meta['dim']} and the layer before", f"weight.{i}", kind="tensor")
            weights.append(w.astype(np.float32))
            biases.append(b.astype(np.float32))
        if weights[-1].shape[1] != 1:
            raise DataError(weights_path, "the last layer must have one output (a logit)", f"weight.{len(weights) - 1}",
                            kind="tensor")
        return cls(weights, biases, float(meta["threshold_logit"]), meta, str(folder))


def _read_meta(path: str) -> dict:
    raw = read_bytes(path)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"not a classifier description (invalid JSON: {err})") from None
    if not isinstance(meta, dict):
        raise DataError(path, "not a classifier description (the top level is not an object)")
    for key in REQUIRED:
        if key not in meta:
            raise DataError(path, "missing field: not a folder written by `lossforge train-pu --save`", key, kind="field")
    if meta["format"] != FORMAT:
        raise DataError(path, f"format {meta['format']!r} is not {FORMAT!r}", "format", kind="field")
    if meta["version"] != VERSION:
        raise DataError(path, f"version {meta['version']!r}: this lossforge reads version {VERSION}", "version", kind="field")
    for key in ("dim", "layers"):
        if not isinstance(meta[key], int) or meta[key] < 1:
            raise DataError(path, f"must be a positive integer, found {meta[key]!r}", key, kind="field")
    if not isinstance(meta["threshold_logit"], (int, float)) or not np.isfinite(meta["threshold_logit"]):
        raise DataError(path, f"must be a finite number, found {meta['threshold_logit']!r}", "threshold_logit", kind="field")
    return meta


def _read_weights(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    raw = read_bytes(path)
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError, OSError) as err:
        raise DataError(path, f"not a complete safetensors file (truncated or damaged: {err})") from None
    for key, value in tensors.items():
        if not np.isfinite(value).all():
            raise DataError(path, "holds NaN or inf", key, kind="tensor")
    return tensors


# -- scoring files ----------------------------------------------------------------------------------


OUTPUT_COLUMNS = ("score", "prediction")


def check_scorable(clf: PUClassifier, shards, id_column: str | None) -> None:
    """Every shard has the id column and (where the schema says) the classifier's dimension:
    checked from the footers, before any work."""
    from trainers.data.shards import EMBEDDING, parquet_file

    if id_column in OUTPUT_COLUMNS:
        raise UsageError(f"--id-column {id_column!r} is a column the predictions are written to; pick another")
    id_types = {}
    for shard in shards.shards:
        if id_column is not None and id_column not in shard.names:
            raise DataError(shard.source, f"missing column; found {sorted(shard.names)}", id_column)
        schema = parquet_file(shard.source).schema_arrow
        if id_column is not None:
            id_types.setdefault(str(schema.field(id_column).type), shard.source)
            if len(id_types) > 1:  # one output file cannot hold two types of id: refused before any work
                raise DataError(shard.source, f"has type {schema.field(id_column).type}, but {next(iter(id_types.values()))} "
                                              f"has {next(iter(id_types))}", id_column)
        typ = schema.field(EMBEDDING).type
        if hasattr(typ, "list_size") and typ.list_size != clf.dim:
            raise DataError(shard.source, f"embeddings have dimension {typ.list_size}, the classifier {clf.source} "
                                          f"expects {clf.dim}", EMBEDDING)


def score_shard(clf: PUClassifier, source: str, id_column: str | None = None):
    """``[id_column], score, prediction`` for every row of one shard, a row group at a time."""
    import pyarrow as pa

    from trainers.data.shards import EMBEDDING, open_shards, iter_row_groups

    shards = open_shards(source, "none")
    check_scorable(clf, shards, id_column)
    scores, ids = [], []
    for shard, x, columns in iter_row_groups(shards, extra=(id_column,) if id_column else ()):
        if x.shape[1] != clf.dim:
            raise DataError(shard.source, f"embeddings have dimension {x.shape[1]}, the classifier expects {clf.dim}",
                            EMBEDDING)
        scores.append(clf.logits(x))
        if id_column:
            ids.append(columns[id_column])
    logit = np.concatenate(scores)
    out = {} if not id_column else {id_column: pa.concat_arrays([c for part in ids for c in part.chunks])}
    out["score"] = pa.array(1.0 / (1.0 + np.exp(-logit)), pa.float64())
    out["prediction"] = pa.array((logit >= clf.threshold_logit).astype(np.int8), pa.int8())
    return pa.table(out)
