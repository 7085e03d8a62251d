"""Checkpoints are data, never code.

Run folders live on shared disks and object storage, where anyone with write access could drop a
file in; ``torch.load`` with ``weights_only=False`` runs whatever a pickle names. Every checkpoint
lossforge writes holds only tensors and plain values (dicts, lists, numbers, strings), so every
one is read with ``weights_only=True`` -- on every torch the package accepts, whatever its
default -- and anything else is refused as one error line, with nothing in it run.
"""
from __future__ import annotations

import pickle
from pathlib import Path

from trainers.errors import DataError

STATE_FILE = "state.pt"


class RefusedCheckpoint(DataError):
    """A checkpoint that holds more than tensors and plain values: tampered or foreign."""


def plain(value):
    """``value`` with numpy arrays and scalars turned into lists and Python numbers (what
    ``weights_only=True`` reads back); tensors, dicts, lists and plain values pass through."""
    import numpy as np

    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def save_state(state: dict, path: str | Path) -> None:
    import torch

    torch.save(plain(state), path)


def load_state(path: str | Path, what: str = "checkpoint"):
    """The tensors and plain values saved at ``path``; a file holding anything else (code,
    arbitrary objects) or a damaged one is a DataError naming it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RefusedCheckpoint(path, f"refused to load this {what}: it holds objects beyond tensors and plain values "
                              "(a tampered or foreign file; nothing in it was run)") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(path, f"cannot load this {what} (damaged or not a torch file): {first}") from None


def check_checkpoints(*folders: str | Path) -> int:
    """Load every checkpoint under the run folders a resume will hand to a worker: a tampered one
    fails the command now, as one line, before Ray starts. A damaged one (a kill while Ray copied
    it in, before Ray recorded it) is no danger and no reason to refuse the resume: Ray resumes
    from the last checkpoint it recorded, and a damaged file it did record fails in the worker,
    naming the file. Returns how many were checked."""
    paths = sorted(p for folder in folders if Path(folder).is_dir() for p in Path(folder).rglob(STATE_FILE))
    for path in paths:
        try:
            load_state(path)
        except RefusedCheckpoint:
            raise
        except DataError:
            continue
    return len(paths)
