"""A run's record (``run.json``: provenance and status) and its console log (``console.log``).

The record says what produced a run and where it stands: metactl, torch and Python versions,
the git commits of the working directory, of metactl and of the algorithm's package when they
are known, the device, the host, the command line, start and end times, and the status
(``running``, ``finished``, ``interrupted`` or ``failed``). It is rewritten atomically whenever
the status changes, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from metactl.fileio import atomic_write

RECORD_NAME = "run.json"
CONSOLE_NAME = "console.log"
STATUSES = ("running", "finished", "interrupted", "failed")


def now() -> str:
    """The current time, ISO 8601 with the UTC offset, to the second."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def read_record(folder: Path) -> dict[str, Any]:
    """The run's record, or an empty dict for runs written before records existed (or a
    record that cannot be read)."""
    try:
        record = json.loads((Path(folder) / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(folder: Path, record: dict[str, Any]) -> None:
    with atomic_write(Path(folder) / RECORD_NAME,
                      "check the run folder's permissions and free space") as temporary:
        temporary.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")


def git_commit(folder: Path) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``folder``; None when it
    is not in one or git is missing."""
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _distribution_of(module_name: str) -> metadata.Distribution | None:
    top = module_name.partition(".")[0]
    names = metadata.packages_distributions().get(top, [])
    for name in names:
        try:
            return metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def package_provenance(module_name: str) -> dict[str, Any]:
    """The distribution, version and git commit (when known) of the package of a module."""
    module = sys.modules.get(module_name)
    distribution = _distribution_of(module_name)
    info: dict[str, Any] = {"module": module_name}
    if distribution is not None:
        info["distribution"] = f"{distribution.metadata['Name']} {distribution.version}"
        info["git"] = _vcs_commit(distribution)
    source = getattr(module, "__file__", None)
    if source and not info.get("git"):
        info["git"] = git_commit(Path(source).parent)
    return info


def _vcs_commit(distribution: metadata.Distribution) -> dict[str, Any] | None:
    """The commit pip recorded when it installed from a git URL (PEP 610)."""
    try:
        direct = json.loads(distribution.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    commit = direct.get("vcs_info", {}).get("commit_id")
    return {"commit": commit, "dirty": False} if commit else None


def versions() -> dict[str, str]:
    import torch

    from metactl import __version__

    return {"metactl": __version__, "torch": torch.__version__,
            "python": platform.python_version()}


def new_record(config: dict[str, Any], algorithm_module: str, device: str) -> dict[str, Any]:
    """The record of a run that starts now."""
    import metactl

    return {
        "algorithm": config["algorithm"],
        "dataset": config["dataset"],
        "status": "running",
        "started": now(),
        "ended": None,
        "command": list(sys.argv),
        "cwd": str(Path.cwd()),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
        "versions": versions(),
        "git": {"project": git_commit(Path.cwd()),
                "metactl": git_commit(Path(metactl.__file__).parent)},
        "plugin": package_provenance(algorithm_module),
    }


class RunRecord:
    """Keeps ``run.json`` up to date while a run trains."""

    def __init__(self, folder: Path, record: dict[str, Any]) -> None:
        self.folder, self.record = Path(folder), record

    @classmethod
    def start(cls, folder: Path, config: dict[str, Any], algorithm_module: str, device: str,
              total_steps: int) -> RunRecord:
        """A new record, or a resumed run's record with the new session's provenance."""
        previous = read_record(folder)
        record = new_record(config, algorithm_module, device)
        if previous:
            record["started"] = previous.get("started", record["started"])
            record["resumed"] = [*previous.get("resumed", []), now()]
        record["steps"] = {"done": previous.get("steps", {}).get("done", 0),
                           "total": total_steps}
        record["episodes"] = {"done": previous.get("episodes", {}).get("done", 0),
                              "total": int(config["episodes"])}
        keeper = cls(folder, record)
        keeper.save()
        return keeper

    def save(self) -> None:
        write_record(self.folder, self.record)

    def progress(self, step: int, episodes: int) -> None:
        self.record["steps"]["done"] = step
        self.record["episodes"]["done"] = episodes

    def finish(self, status: str, error: str | None = None) -> None:
        """Set the final status (``finished``, ``interrupted`` or ``failed``) and save."""
        self.record["status"] = status
        self.record["ended"] = now()
        if error:
            self.record["error"] = error
        else:
            self.record.pop("error", None)
        self.save()


class ConsoleLog:
    """``console.log``: each line the console showed, with the time.

    Lines are held in memory until :meth:`open` (called once the run folder is a run, so a run
    that fails to start leaves no folder behind), then appended as they come.
    """

    def __init__(self, folder: Path, echo: Callable[[str], None] | None = None,
                 opened: bool = True) -> None:
        self.path = Path(folder) / CONSOLE_NAME
        self.echo = echo
        self.pending: list[str] | None = None if opened else []

    def open(self) -> None:
        """Write the lines held so far and append the next ones directly."""
        held, self.pending = self.pending or [], None
        self._append(held)

    def write(self, message: str) -> None:
        """Log ``message`` (without echoing it)."""
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        lines = [f"[{stamp}] {line}" for line in str(message).splitlines() or [""]]
        if self.pending is not None:
            self.pending.extend(lines)
        else:
            self._append(lines)

    def _append(self, lines: list[str]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as stream:
                stream.writelines(line + "\n" for line in lines)
        except OSError:  # the log must never stop the work it describes
            pass

    def __call__(self, message: str) -> None:
        """Show ``message`` on the console (when an ``echo`` is given) and log it."""
        if self.echo is not None:
            self.echo(message)
        self.write(message)
