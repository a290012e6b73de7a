"""The run lock, output checks and the removal of killed processes' temporary files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from metactl.errors import UsageError
from metactl.fileio import (
    atomic_write,
    check_output_file,
    check_output_folder,
    exclusive_lock,
    read_lock_holder,
)


def test_a_lock_is_exclusive_names_its_holder_and_is_removed(tmp_path):
    path = tmp_path / ".lock"
    with exclusive_lock(path, "metactl train", "run folder x"):
        holder = read_lock_holder(path)
        assert (holder.pid, holder.command) == (os.getpid(), "metactl train")
        with pytest.raises(UsageError, match=f"run folder x is in use by process {os.getpid()} "
                                             r"\(metactl train, since "):
            with exclusive_lock(path, "metactl evaluate", "run folder x"):
                pass  # pragma: no cover - never reached
    assert not path.exists()
    with exclusive_lock(path, "metactl evaluate", "run folder x"):
        assert read_lock_holder(path).command == "metactl evaluate"


def finished_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_atomic_write_removes_what_killed_writers_left(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".store.h5.{finished_pid()}.tmp"
        busy = tmp_path / f".store.h5.{live.pid}.tmp"
        other = tmp_path / f".other.h5.{finished_pid()}.tmp"
        for path in (stale, busy, other):
            path.write_bytes(b"half")
        with atomic_write(tmp_path / "store.h5") as temporary:
            temporary.write_bytes(b"whole")
        assert (tmp_path / "store.h5").read_bytes() == b"whole"
        assert not stale.exists() and busy.exists() and other.exists()
    finally:
        live.kill()
        live.wait()


def test_outputs_are_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        check_output_file(tmp_path / "folder", "-o")
    with pytest.raises(UsageError, match="which is a file"):
        check_output_file(tmp_path / "file" / "out.csv", "-o")
    with pytest.raises(UsageError, match="--out .* is a file"):
        check_output_folder(tmp_path / "file", "--out")
    assert check_output_file(tmp_path / "new" / "deeper" / "out.csv", "-o")
    assert check_output_folder(tmp_path / "new" / "run", "--out")
    assert not (tmp_path / "new").exists()  # checking creates nothing
