"""run.json and console.log."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from metactl.engine.record import ConsoleLog, RunRecord, git_commit, read_record


def test_the_record_follows_the_status_and_survives_a_resume(tmp_path):
    config = {"algorithm": "prototypical", "dataset": "omniglot", "episodes": 40}
    record = RunRecord.start(tmp_path, config, "metactl_plugins.prototypical", "cpu, fp32", 10)
    saved = read_record(tmp_path)
    assert saved["status"] == "running" and saved["steps"] == {"done": 0, "total": 10}
    assert saved["device"] == "cpu, fp32" and saved["ended"] is None
    record.progress(4, 16)
    record.finish("interrupted")
    saved = read_record(tmp_path)
    assert saved["status"] == "interrupted" and saved["steps"]["done"] == 4 and saved["ended"]
    resumed = RunRecord.start(tmp_path, config, "metactl_plugins.prototypical", "cpu", 10)
    assert resumed.record["started"] == saved["started"] and len(resumed.record["resumed"]) == 1
    assert resumed.record["steps"]["done"] == 4
    resumed.finish("failed", "RuntimeError: boom")
    assert read_record(tmp_path)["error"] == "RuntimeError: boom"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_damaged_record_reads_as_empty(tmp_path):
    (tmp_path / "run.json").write_text('{"status": "runn')
    assert read_record(tmp_path) == {}


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commits_are_recorded_with_their_dirty_state(tmp_path):
    assert git_commit(tmp_path) is None
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "file").write_text("a")
    subprocess.run([*git, "add", "file"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_commit(tmp_path / "") == {"commit": sha.strip(), "dirty": False}
    (tmp_path / "file").write_text("b")
    assert git_commit(tmp_path)["dirty"] is True


def test_the_console_log_holds_lines_until_the_run_folder_is_a_run(tmp_path):
    shown = []
    log = ConsoleLog(tmp_path / "run", shown.append, opened=False)
    log("fetching omniglot")
    assert not (tmp_path / "run").exists() and shown == ["fetching omniglot"]
    (tmp_path / "run").mkdir()
    log.open()
    log.write("step 1/2\nsecond line")
    lines = (tmp_path / "run" / "console.log").read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["fetching omniglot", "step 1/2",
                                                          "second line"]
    assert json.dumps(lines)  # plain text
