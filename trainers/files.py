"""Writing results so that a crash never leaves half a file, and reading them back with errors
that name the file. Writing goes through :func:`trainers.data.storage.write_bytes` (imported
when a file is written, so that importing this module stays light)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from trainers.errors import DataError, UsageError


def write_text_atomic(location: str | Path, text: str) -> None:
    """``text`` as UTF-8 to a path or URI, whole or not at all (see ``write_bytes``)."""
    from trainers.data.storage import write_bytes

    write_bytes(location, text.encode("utf-8"))


def write_json(location: str | Path, payload) -> None:
    write_text_atomic(location, json.dumps(payload, indent=2, default=float) + "\n")


def complete_lines(path: str | Path) -> tuple[list[str], bytes]:
    """The one torn-line reader of an append-only JSON-lines file: (its lines up to the last
    newline, the bytes after it). A crash inside an append leaves a torn last line; readers
    ignore it (a writer still appending finishes it later), a resume cuts it off."""
    path = Path(path)
    raw = path.read_bytes() if path.exists() else b""
    cut = raw.rfind(b"\n") + 1
    return raw[:cut].decode("utf-8", errors="replace").splitlines(), raw[cut:]


def read_json(path: str | Path, what: str = "JSON file"):
    """Parse ``path``; a missing, unreadable, non-UTF-8 or corrupt file is one DataError."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, f"is a folder, not a {what}")
    if not path.is_file():
        raise DataError(path, f"no such {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(path, f"not a {what}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DataError(path, f"not a {what}: invalid JSON at line {err.lineno}, column {err.colno} ({err.msg})") from None
    except OSError as err:
        raise DataError(path, f"cannot read the {what}: {err.strerror}") from None


def check_writable_folder(path: str | Path) -> None:
    """A folder can be created (or is one) at ``path``: no regular file on the way, and write
    permission where it starts."""
    path = Path(path).expanduser().resolve()
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"cannot create {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise UsageError(f"cannot write under {parent} (permission denied)")
            return


def load_object(path: str | Path, from_dict, what: str):
    """``from_dict`` of a JSON file that must hold one object; a file that is not JSON, not an
    object, or lacks or mangles a field is one DataError naming the file (and the field)."""
    spec = read_json(path, what)
    if not isinstance(spec, dict):
        raise DataError(path, f"not a {what}: the top level is {type(spec).__name__}, not an object")
    try:
        return from_dict(spec)
    except KeyError as err:
        raise DataError(path, "missing", column=str(err.args[0]), kind="field") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise DataError(path, f"not a valid {what}: {err}") from None
