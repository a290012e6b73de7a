"""`metactl evaluate --positions`: accuracy by instance position for online learners (MANN)."""

from __future__ import annotations

import json

import pytest
from testsupport import run_metactl


@pytest.fixture(scope="module")
def mann_run(omniglot_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("mann") / "run"
    trained = run_metactl("train", "mann", "--episodes", "8", "--meta-batch", "4",
                          "--set", "val_episodes=0", "--set", "controller_size=32",
                          "--out", str(run), env={"METACTL_HOME": str(omniglot_root)})
    assert trained.returncode == 0, trained.stderr
    return run


@pytest.mark.slow
def test_positions_report_each_instance_with_a_confidence_interval(omniglot_root, mann_run):
    env = {"METACTL_HOME": str(omniglot_root)}
    result = run_metactl("evaluate", str(mann_run), "--positions", "1,2,10", "--episodes", "20",
                         "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["positions"] == [1, 2, 10] and len(report["means"]) == 3
    assert (report["episodes"], report["way"], report["instances"]) == (20, 5, 10)
    assert all(0 <= mean <= 1 for mean in report["means"])
    assert all(0 < ci95 < 0.5 for ci95 in report["ci95s"])
    saved = json.loads((mann_run / "evaluation-test-5way-positions.json").read_text())
    assert saved == report
    text = run_metactl("evaluate", str(mann_run), "--positions", "paper", "--episodes", "20",
                       env=env)
    assert text.returncode == 0, text.stderr
    assert "5-way sequences of 10 images per class" in text.stdout
    assert text.stdout.count("instance ") == 6


@pytest.mark.slow
def test_mann_is_also_evaluated_on_standard_episodes(omniglot_root, mann_run):
    env = {"METACTL_HOME": str(omniglot_root)}
    result = run_metactl("evaluate", str(mann_run), "--episodes", "20", "--shot", "5", "--json",
                         env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["way"], report["shot"], report["episodes"]) == (5, 5, 20)
    too_wide = run_metactl("evaluate", str(mann_run), "--way", "10", "--episodes", "4", env=env)
    assert too_wide.returncode != 0 and "Traceback" not in too_wide.stderr
    assert "5 label slots" in too_wide.stderr and "label_slots" in too_wide.stderr


@pytest.mark.slow
def test_positions_need_an_online_learner(omniglot_root, tmp_path):
    env = {"METACTL_HOME": str(omniglot_root)}
    run = tmp_path / "proto"
    trained = run_metactl("train", "prototypical", "--episodes", "2", "--train-way", "5",
                          "--set", "val_episodes=0", "--out", str(run), env=env)
    assert trained.returncode == 0, trained.stderr
    result = run_metactl("evaluate", str(run), "--positions", "1,2", env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "does not learn from labelled sequences" in result.stderr
    bad = run_metactl("evaluate", str(run), "--positions", "0,3", env=env)
    assert bad.returncode != 0 and "start at 1" in bad.stderr
    mixed = run_metactl("evaluate", str(run), "--positions", "1,2", "--shot", "5", env=env)
    assert mixed.returncode != 0 and "does not combine with --shot" in mixed.stderr
    assert "Traceback" not in mixed.stderr
