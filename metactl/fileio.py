"""Writing files so that a failure never leaves a half-written file under the real name, one
writer at a time, and no litter from a process that was killed."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from metactl.errors import DataError, UsageError

FULL_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
TEMPORARY_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp$")


@contextmanager
def atomic_write(path: str | Path, hint: str = "choose a writable output path",
                 what: str = "") -> Iterator[Path]:
    """Yield a temporary name beside ``path``; rename it to ``path`` when the block succeeds,
    delete it when it fails. An ``OSError`` becomes a one-line :class:`DataError` that calls
    the file ``what`` (e.g. "the store") when given. Temporary files that killed processes
    left for the same name are removed first."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        name = f"{what} {path}" if what else str(path)
        raise DataError(f"cannot write {name}: {describe_os_error(error)}",
                        disk_hint(error, hint)) from None
    finally:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)


def describe_os_error(error: OSError) -> str:
    """``No space left on device (the disk is full)`` and the like: what the user can act on."""
    text = error.strerror or str(error) or type(error).__name__
    if error.errno in FULL_DISK_ERRORS:
        return f"{text} (the disk is full)" if error.errno == errno.ENOSPC else text
    return text


def disk_hint(error: OSError, hint: str) -> str:
    if error.errno in FULL_DISK_ERRORS:
        return "free some disk space (or choose another folder) and run the command again"
    return hint


def process_is_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Delete ``.<name>.<pid>.tmp`` files in ``folder`` whose process is gone (killed while
    writing); another live process's files are left alone. ``name=None``: every such file."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".{name}.*.tmp" if name else ".*.tmp"):
        match = TEMPORARY_NAME.match(path.name)
        if match and not process_is_alive(int(match["pid"])):
            with suppress(OSError):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
    return removed


# --- outputs -----------------------------------------------------------------------------------

def check_output_file(path: str | Path, option: str) -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder, or a file in a
    folder that is not one or is read-only."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder", "name a file to write")
    parent = _existing_ancestor(path.parent)
    if not parent.is_dir():
        raise UsageError(f"{option} {path} lies under {parent}, which is a file",
                         "choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: {parent} is not writable",
                         "choose a writable output path")
    return path


def check_output_folder(path: str | Path, option: str) -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file", "name a folder (new or empty)")
    parent = _existing_ancestor(path)
    if not parent.is_dir():
        raise UsageError(f"{option} {path} lies under {parent}, which is a file",
                         "choose another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into {parent}", "choose a writable folder")
    return path


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --- one writer at a time ----------------------------------------------------------------------

@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as the holder wrote it into the lock file."""

    pid: int | None
    host: str
    command: str
    since: str

    def describe(self) -> str:
        if self.pid is None:
            return "another process"
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        return f"process {self.pid}{where} ({self.command}, since {self.since})"


def read_lock_holder(path: Path) -> LockHolder:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockHolder(int(data["pid"]), str(data.get("host", "")),
                          str(data.get("command", "metactl")), str(data.get("since", "?")))
    except (OSError, ValueError, KeyError, TypeError):
        return LockHolder(None, "", "", "")


@contextmanager
def exclusive_lock(path: Path, command: str, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block; the kernel drops it
    when the process dies, however it dies. Another holder makes this a one-line
    :class:`UsageError` naming its process id. The file is removed on release.

    Args:
        path: the lock file.
        command: what this process does, recorded for the error another process would print.
        what: the thing locked, for messages (e.g. "run folder runs/x").
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    handle = _acquire(path, command, what, fcntl)
    try:
        yield
    finally:
        with suppress(OSError):
            path.unlink()
        os.close(handle)


def _acquire(path: Path, command: str, what: str, fcntl) -> int:
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise DataError(f"cannot write into {what}: {describe_os_error(error)}",
                            disk_hint(error, "check the folder's permissions")) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(handle)
            holder = read_lock_holder(path)
            raise UsageError(f"{what} is in use by {holder.describe()}",
                             "one process writes a run at a time; wait for it to finish or "
                             "stop it") from None
        if _same_file(handle, path):  # not a file that its last holder removed meanwhile
            _record_holder(handle, command)
            return handle
        os.close(handle)


def _same_file(handle: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle).st_ino
    except OSError:
        return False


def _record_holder(handle: int, command: str) -> None:
    since = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                       "since": since}) + "\n"
    with suppress(OSError):  # the lock holds even when a full disk keeps the note out
        os.ftruncate(handle, 0)
        os.write(handle, text.encode())
