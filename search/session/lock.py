"""One writer per run folder (a search's results folder, a train-dpo or train-pu --workers run).

Two drivers appending to one evaluation log both train the same packs and tell the same
candidates twice, so a command that writes a run folder first takes its lock, and a second one
is refused with one line naming the holder. Two kinds, chosen by what the folder's file system
supports:

- **local and network disks**: an OS lock (``fcntl.flock``) on ``lossforge.lock``. The kernel
  drops it when its process dies however it dies (SIGKILL, a crash), so a stale lock is simply
  taken by the next command; the file itself only records the last holder, for the message.
- **object storage mounted as a file system** (s3fs, gcsfuse and the like: no OS locks, or OS locks
  that hold only on this machine, which :func:`os_locks_hold` tells from the mount table): a lease,
  ``lossforge.lease``, a JSON object ``{"owner", "pid", "host", "command", "since", "heartbeat",
  "expires"}``. The holder renews it every :data:`HEARTBEAT_SECONDS`; a lease whose ``expires`` is
  past (its holder was killed, or lost the storage for :data:`LEASE_SECONDS`) is taken over. A
  taker writes its lease, waits, and reads it back: of two takers at once only the one whose lease
  stayed proceeds. The holder deletes its lease when it ends.
"""
from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from trainers.errors import UsageError
from trainers.files import write_json

LOCK_FILE = "lossforge.lock"
LEASE_FILE = "lossforge.lease"
LEASE_SECONDS = 60.0
HEARTBEAT_SECONDS = 15.0
SETTLE_SECONDS = 2.0  # a lease taker's wait before it reads its lease back
NO_OS_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
# FUSE file systems of object stores and remote disks: the kernel grants flock on them without
# error, but only on this machine, so two hosts would both "hold" the lock.
REMOTE_FUSE = ("s3fs", "gcsfuse", "goofys", "geesefs", "rclone", "mountpoint-s3", "blobfuse", "sshfs", "juicefs")


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["lossforge", *sys.argv[1:]])[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another lossforge command"
    return f"`{holder.get('command', 'lossforge')}` (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"


def _read(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def os_locks_hold(folder: Path, mounts: str | None = None) -> bool:
    """Whether an OS lock on ``folder`` also excludes other machines. Not on a remote FUSE mount
    (:data:`REMOTE_FUSE`), nor on NFS mounted ``nolock`` or with ``local_lock`` other than none:
    there the lease is used. ``mounts``: the text of /proc/self/mounts (read when None; where there
    is none, as on macOS, OS locks are trusted)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return True
    path, best = str(Path(folder).resolve()), ("", "", "")
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best[0]):
            best = (point, fields[2], fields[3])
    _, fstype, options = best
    if fstype.startswith("fuse") and any(name in fstype for name in REMOTE_FUSE):
        return False
    opts = options.split(",")
    return not (fstype.startswith("nfs") and ("nolock" in opts or any(o.startswith("local_lock=") and o != "local_lock=none"
                                                                       for o in opts)))


class RunLock:
    """``RunLock(folder).acquire()`` or raise UsageError naming the holder; held until
    :meth:`release` or the process ends. ``lease=True`` forces the lease (tests, or a file system
    whose OS locks are known to lie)."""

    def __init__(self, folder: str | Path, lease: bool = False):
        self.folder, self.lease = Path(folder), lease
        self._fd: int | None = None
        self._owner = uuid.uuid4().hex
        self._stop = threading.Event()

    def refusal(self, holder: dict | None) -> UsageError:
        return UsageError(f"{self.folder} is in use by {_describe(holder)}: one command writes a run folder at a time; "
                          "wait for it or stop it (nothing was changed)")

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lease = self.lease or not os_locks_hold(self.folder)
        if not self.lease:
            import fcntl

            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self.refusal(_read(self.folder / LOCK_FILE)) from None
            except OSError as err:
                os.close(fd)
                if err.errno not in NO_OS_LOCKS:
                    raise
                self.lease = True
            else:
                self._fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps(_holder()) + "\n").encode())
                return self
        return self._take_lease()

    # -- the lease ------------------------------------------------------------------------------
    def _lease(self) -> dict:
        now = time.time()
        return {"owner": self._owner, **_holder(), "heartbeat": now, "expires": now + LEASE_SECONDS}

    def _take_lease(self) -> "RunLock":
        path = self.folder / LEASE_FILE
        current = _read(path)
        if current and current.get("owner") != self._owner and float(current.get("expires", 0)) > time.time():
            raise self.refusal(current)
        write_json(path, self._lease())
        time.sleep(SETTLE_SECONDS)
        current = _read(path)
        if not current or current.get("owner") != self._owner:
            raise self.refusal(current)
        threading.Thread(target=self._heartbeat, name="lossforge-lease", daemon=True).start()
        atexit.register(self.release)
        return self

    def _heartbeat(self) -> None:
        path = self.folder / LEASE_FILE
        while not self._stop.wait(HEARTBEAT_SECONDS):
            if (_read(path) or {}).get("owner") not in (self._owner, None):
                return  # taken over (this process stalled past the expiry): never write over the taker
            try:
                write_json(path, self._lease())
            except OSError:
                continue  # a storage hiccup: renew at the next beat (the lease lasts 4 beats), never stop renewing

    def release(self) -> None:
        self._stop.set()
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the OS lock
            self._fd = None
        elif self.lease and (_read(self.folder / LEASE_FILE) or {}).get("owner") == self._owner:
            (self.folder / LEASE_FILE).unlink(missing_ok=True)


_HELD: dict[Path, RunLock] = {}  # this process's locks: a command run twice in one process is no second writer


def hold(folder: str | Path) -> RunLock:
    """Take ``folder``'s lock for this process (again: the lock it holds already)."""
    key = Path(folder).resolve()
    if key not in _HELD:
        _HELD[key] = RunLock(key).acquire()
    return _HELD[key]


def release_all() -> None:
    """At the end of a command: every lock this process took."""
    for lock in _HELD.values():
        lock.release()
    _HELD.clear()
