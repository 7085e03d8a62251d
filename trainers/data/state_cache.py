"""A disk cache of frozen lower-layer token states, one file per (model, text).

Pair mode runs a model's lower layers once per distinct text and fine-tunes only the top layers
over what they produced. Those states are kept here, float16 by default, so later epochs, runs
and search trials read them instead of recomputing.

Layout: ``<folder>/<model key>/<2 hex>/<sha256 of the text>.bin``. The model key hashes the
lower layers' weights and the windowing, so a different model, depth or window never reads
another's states. A file is written to a temporary name and renamed into place (a killed writer
leaves no file under the final name), and carries its own length and CRC32: a torn or damaged
file fails the check, is deleted and recomputed, never read.
"""
from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np

MAGIC = b"LFSTATE1"
HEADER = struct.Struct("<8sIII")  # magic, windows, positions per window, hidden size
DTYPES = {"float16": np.float16, "float32": np.float32}


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StateCache:
    """``put(text, states, lengths)`` / ``get(text)`` of one model's window states.

    ``states``: ``[windows, positions, hidden]``; ``lengths``: ``[windows]`` real tokens in each.
    """

    def __init__(self, folder: str | Path, model_key: str, dtype: str = "float16"):
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.root = Path(folder).expanduser() / model_key
        self.dtype = DTYPES[dtype]
        self.rebuilt = 0  # damaged files found (and deleted) so far

    def path(self, text: str) -> Path:
        key = text_key(text)
        return self.root / key[:2] / f"{key}.bin"

    def put(self, text: str, states: np.ndarray, lengths: np.ndarray) -> None:
        windows, positions, hidden = states.shape
        body = HEADER.pack(MAGIC, windows, positions, hidden) + np.asarray(lengths, "<i4").tobytes() \
            + np.ascontiguousarray(states, dtype=self.dtype).tobytes()
        target = self.path(text)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        temporary.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
        os.replace(temporary, target)

    def get(self, text: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The states and lengths, or None when absent or damaged (a damaged file is deleted)."""
        target = self.path(text)
        try:
            raw = target.read_bytes()
        except FileNotFoundError:
            return None
        parsed = self._parse(raw)
        if parsed is None:
            self.rebuilt += 1
            target.unlink(missing_ok=True)
        return parsed

    def _parse(self, raw: bytes) -> tuple[np.ndarray, np.ndarray] | None:
        if len(raw) < HEADER.size + 4 or struct.unpack("<I", raw[-4:])[0] != zlib.crc32(raw[:-4]):
            return None
        magic, windows, positions, hidden = HEADER.unpack_from(raw)
        itemsize = np.dtype(self.dtype).itemsize
        if magic != MAGIC or len(raw) != HEADER.size + 4 * windows + itemsize * windows * positions * hidden + 4:
            return None
        lengths = np.frombuffer(raw, "<i4", windows, HEADER.size)
        states = np.frombuffer(raw, self.dtype, windows * positions * hidden, HEADER.size + 4 * windows)
        return states.reshape(windows, positions, hidden), lengths

    def valid(self, text: str) -> bool:
        return self.get(text) is not None
