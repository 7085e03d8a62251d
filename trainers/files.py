"""Writing results so that a crash never leaves half a file, and reading them back with errors
that name the file. Standard library only."""
from __future__ import annotations

import json
import os
from pathlib import Path

from trainers.errors import DataError, UsageError


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write next to ``path``, fsync, then rename over it: readers see the old file or the
    new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, payload) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=float) + "\n")


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
