"""Where data lives: local paths and URIs (``s3://``, ``gs://``, ``file://``, anything
``pyarrow.fs`` knows), behind one helper, :func:`filesystem_for`, so every reader and writer of
lossforge takes both. Ray Data uses the same ``pyarrow.fs`` file systems.

An S3-compatible server other than AWS (MinIO, a test's loopback server) is named the way the
AWS tools name it: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), e.g.
``http://127.0.0.1:9000``; credentials come from the usual AWS variables or instance roles.

Storage failures become one :class:`DataError` naming the file: "bucket not found",
"access denied", "no such key", rather than the SDK's multi-line text.
"""
from __future__ import annotations

import fnmatch
import os
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from trainers.errors import DataError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
GLOB_CHARS = "*?["


def is_remote(location: str | Path) -> bool:
    """A URI other than ``file://`` (local paths and ``file://`` URIs are local)."""
    match = _SCHEME.match(str(location))
    return bool(match) and match.group(1).lower() != "file"


def local_path(location: str | Path) -> Path:
    """The local path of a plain path or a ``file://`` URI."""
    text = str(location)
    if text.lower().startswith("file://"):
        text = urlparse(text).path
    return Path(text).expanduser()


def normalise(location: str | Path) -> str:
    """A canonical spelling, for comparing an output with the inputs: local paths resolved,
    URIs without a trailing slash."""
    if is_remote(location):
        return str(location).rstrip("/")
    return str(local_path(location).resolve())


@lru_cache(maxsize=8)
def _s3_with_endpoint(endpoint: str, region: str) -> pafs.S3FileSystem:
    parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    # allow_delayed_open: a small object is one PutObject (no multipart upload), which every
    # S3-compatible server supports.
    return pafs.S3FileSystem(endpoint_override=parsed.netloc, scheme=parsed.scheme, region=region,
                             allow_delayed_open=True)


def filesystem_for(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(file system, path inside it)`` for a local path or a URI."""
    if not is_remote(location):
        return pafs.LocalFileSystem(), str(local_path(location).resolve())
    text = str(location)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if text.lower().startswith("s3://") and endpoint and "?" not in text:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return _s3_with_endpoint(endpoint, region), text[len("s3://"):]
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DataError(text, f"cannot open this location: {_first_line(err)}") from None


def uri_of(location: str | Path, path: str) -> str:
    """The user-facing name of ``path`` inside ``location``'s file system (a URI stays a URI)."""
    if not is_remote(location):
        return path
    scheme = _SCHEME.match(str(location)).group(1)
    return f"{scheme}://{path}"


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def storage_error(source: str, err: BaseException, action: str = "read") -> DataError:
    """One line for a storage failure: what the user can fix, not the SDK's text."""
    text = str(err)
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return DataError(source, "bucket not found")
    if any(k in text for k in ("ACCESS_DENIED", "AccessDenied", "HTTP status 403", "InvalidAccessKeyId",
                               "SignatureDoesNotMatch", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH")) \
            or isinstance(err, PermissionError):
        return DataError(source, "access denied (check the credentials and the bucket's or file's permissions)")
    if isinstance(err, FileNotFoundError) or "NoSuchKey" in text or "NO_SUCH_KEY" in text:
        return DataError(source, "no such key" if is_remote(source) else "no such file or folder")
    return DataError(source, f"cannot {action}: {_first_line(err)}")


def _missing(location: str, fs: pafs.FileSystem, path: str) -> DataError:
    """Why ``path`` is not there: for object stores, a missing bucket or a missing key."""
    if is_remote(location):
        bucket = path.split("/", 1)[0]
        try:
            found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
        except (pa.ArrowException, OSError) as err:
            return storage_error(location, err)
        return DataError(location, "no such key" if found else "bucket not found")
    return DataError(location, "no such file or folder")


def file_type(location: str | Path) -> pafs.FileType:
    fs, path = filesystem_for(location)
    try:
        return fs.get_file_info(path).type
    except (pa.ArrowException, OSError) as err:
        raise storage_error(str(location), err) from None


def _hidden(relative: str) -> bool:
    """Files and folders whose names start with ``.`` or ``_`` are bookkeeping (``_SUCCESS``,
    staging folders), skipped as Spark, Arrow datasets and Ray Data skip them."""
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def list_files(location: str | Path, suffixes: tuple[str, ...]) -> list[str]:
    """The files ``location`` names: a file, a folder (files with ``suffixes`` below it, sorted),
    or a glob. Local results are paths, remote ones URIs."""
    text = str(location)
    fs, path = filesystem_for(text)
    try:
        if any(ch in path for ch in GLOB_CHARS):
            return _glob(text, fs, path)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [uri_of(text, info.path)]
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            base = path.rstrip("/")
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.lower().endswith(suffixes)
                           and not _hidden(i.path[len(base):]))
            if not files:
                raise DataError(text, f"the folder holds no {' or '.join(suffixes)} files")
            return [uri_of(text, f) for f in files]
    except (pa.ArrowException, OSError) as err:
        raise storage_error(text, err) from None
    if info.type == pafs.FileType.NotFound:
        raise _missing(text, fs, path)
    raise DataError(text, "not a regular file or folder")


def _glob(text: str, fs: pafs.FileSystem, pattern: str) -> list[str]:
    head = pattern[: min(pattern.index(ch) for ch in GLOB_CHARS if ch in pattern)]
    base = head[: head.rfind("/") + 1] or "."
    info = fs.get_file_info(base.rstrip("/") or base)
    if info.type == pafs.FileType.NotFound:
        raise _missing(text, fs, base)
    infos = fs.get_file_info(pafs.FileSelector(base.rstrip("/") or base, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and glob_match(i.path, pattern))
    if not files:
        raise DataError(text, "the glob matches no files")
    return [uri_of(text, f) for f in files]


def glob_match(path: str, pattern: str) -> bool:
    """A shell's glob, not fnmatch's: ``*``, ``?`` and ``[...]`` stay within one folder level and
    ``**`` spans any number of levels (``data/*.parquet`` is not ``data/old/x.parquet``)."""
    def match(parts: list[str], pats: list[str]) -> bool:
        if not pats:
            return not parts
        if pats[0] == "**":
            return any(match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], pats[0]) and match(parts[1:], pats[1:])

    return match(path.split("/"), pattern.split("/"))


def open_input(location: str | Path):
    """A random-access file (Parquet footers, row groups) for a path or URI."""
    fs, path = filesystem_for(location)
    try:
        return fs.open_input_file(path)
    except (pa.ArrowException, OSError) as err:
        if isinstance(err, FileNotFoundError) or "Path does not exist" in str(err):
            raise _missing(str(location), fs, path) from None
        raise storage_error(str(location), err) from None


def read_bytes(location: str | Path) -> bytes:
    with open_input(location) as f:
        return f.read()


def write_bytes(location: str | Path, data: bytes) -> None:
    """The one atomic writer: a whole file, locally written next to it, fsynced and renamed over
    it (readers see the old file or the new one, never a torn one, also after a crash); to an
    object store, one PUT (atomic by itself)."""
    if not is_remote(location):
        path = local_path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, path = filesystem_for(location)
    try:
        with fs.open_output_stream(path) as out:
            out.write(data)
    except (pa.ArrowException, OSError) as err:
        raise storage_error(str(location), err, "write") from None


def write_parquet(table: pa.Table, location: str | Path) -> None:
    """One Parquet file, written whole or not at all (see :func:`write_bytes`)."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(location, sink.getvalue().to_pybytes())


def join(location: str | Path, name: str) -> str:
    """``location/name`` for a path or a URI."""
    return f"{str(location).rstrip('/')}/{name}" if is_remote(location) else str(local_path(location) / name)


def folder_is_empty(location: str | Path) -> bool:
    """True for a folder with nothing in it, or a location that does not exist yet."""
    fs, path = filesystem_for(location)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return True
        if info.type != pafs.FileType.Directory:
            return False
        return not fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except (pa.ArrowException, OSError) as err:
        raise storage_error(str(location), err) from None


def clear_folder(location: str | Path) -> None:
    """Delete everything inside a folder (or under a URI prefix); an absent one is left absent."""
    fs, path = filesystem_for(location)
    try:
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir_contents(path)
    except (pa.ArrowException, OSError) as err:
        raise storage_error(str(location), err, "delete") from None


def delete_file(location: str | Path) -> None:
    fs, path = filesystem_for(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except (pa.ArrowException, OSError) as err:
        raise storage_error(str(location), err, "delete") from None


def move(src: str | Path, dst: str | Path) -> None:
    """Rename within one file system (an object store copies then deletes)."""
    fs, a = filesystem_for(src)
    _, b = filesystem_for(dst)
    try:
        fs.move(a, b)
    except (pa.ArrowException, OSError) as err:
        raise storage_error(str(src), err, "move") from None
