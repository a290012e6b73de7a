"""The speed and main-job benchmarks run end to end on tiny settings (their figures come from
real runs; these tests check that the scripts work and that the references compute metactl's
losses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testsupport import REPOSITORY

BENCHMARKS = REPOSITORY / "benchmarks"


def run_script(*arguments: str, home, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "METACTL_HOME": str(home), "OMP_NUM_THREADS": "1",
           "PYTHON": sys.executable}
    finished = subprocess.run([*arguments], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=REPOSITORY)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return finished


@pytest.mark.slow
def test_speed_compares_metactl_with_references_that_compute_the_same_loss(omniglot_root):
    finished = run_script(sys.executable, str(BENCHMARKS / "speed.py"), "--quick", "--json",
                          "--only", "prototypical,fomaml", home=omniglot_root)
    report = json.loads(finished.stdout)
    names = [result["name"] for result in report["results"]]
    assert names == ["prototypical", "evaluate prototypical", "fomaml", "sample 1 task",
                     "sample 32 tasks"]
    for result in report["results"]:
        assert result["ours"] > 0 and result["reference"] > 0 and result["ratio"] > 0, result
        assert result["same"] in ("yes", "n/a"), result
    assert [r["same"] for r in report["results"][:3]] == ["yes"] * 3
    assert "learn2learn" in report


@pytest.mark.slow
def test_gpu_speed_script_rehearses_on_the_cpu(omniglot_root, tmp_path):
    out = tmp_path / "gpu"
    run_script("bash", str(BENCHMARKS / "gpu_speed.sh"), str(out), "--tiny", home=omniglot_root)
    fast = json.loads((out / "fast-paths.json").read_text())
    assert [r["workload"] for r in fast["results"]] == ["ProtoNet 1 task/step", "FOMAML mb2"]
    assert all(r["tasks_per_second"] > 0 for r in fast["results"]), fast


@pytest.mark.slow
def test_main_job_report_records_time_accuracy_and_machine(omniglot_root, tmp_path):
    out = tmp_path / "reports" / "main-job.json"
    run_script(sys.executable, str(BENCHMARKS / "main_job.py"), "--quick", "--episodes", "2",
               "--home", str(omniglot_root), "--out", str(out), home=omniglot_root)
    report = json.loads(out.read_text())
    assert report["test_episodes"] == 20 and 0 <= report["accuracy"] <= 1
    assert report["seconds"]["total"] >= report["seconds"]["train"] > 0
    assert report["training"]["episodes"] == 2 and report["machine"]["torch"]
    # `metactl results` puts it in RESULTS.md, figures as the report has them.
    results = tmp_path / "RESULTS.md"
    run_script(str(Path(sys.executable).with_name("metactl")), "results", str(out.parent), "-o",
               str(results), home=omniglot_root)
    text = results.read_text()
    assert "## The README's main job" in text
    assert f"{100 * report['accuracy']:.2f} ± {100 * report['ci95']:.2f} (20 5-way" in text


def test_mini_imagenet_rows_merge_into_the_report_and_keep_the_others(tmp_path):
    """Rerunning some algorithms replaces their rows only (the training itself needs the
    mini-ImageNet store; these rows are made up)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mini_imagenet_cpu",
                                                  BENCHMARKS / "mini_imagenet_cpu.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    result = {"settings": {"hidden": 16}, "steps": 3, "untrained": {"mean": 0.25},
              "trained": {"mean": 0.3}}
    report = tmp_path / "reports" / "short-cpu.json"
    benchmark.record(report, "maml", result, "python benchmarks/mini_imagenet_cpu.py maml")
    benchmark.record(report, "prototypical", {**result, "steps": 4}, "command")
    benchmark.record(report, "maml", {**result, "steps": 5}, "again")
    written = json.loads(report.read_text())
    assert written["format"] == "metactl-short-runs" and written["dataset"] == "mini-imagenet"
    assert list(written["algorithms"]) == ["prototypical", "maml"]  # the benchmark's order
    assert written["algorithms"]["maml"]["steps"] == 5
    assert written["algorithms"]["maml"]["command"] == "again"
    assert written["algorithms"]["prototypical"]["steps"] == 4
    assert written["algorithms"]["maml"]["machine"]["torch"]
    report.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(SystemExit, match="not a mini-imagenet short-runs report"):
        benchmark.record(report, "maml", result, "command")
