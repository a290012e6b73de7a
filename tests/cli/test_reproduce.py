"""``metactl reproduce`` and ``metactl results`` through the real command, with a throwaway
third-party algorithm whose paper table has a protocol of a few steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from testsupport import fake_plugin, run_metactl

pytestmark = pytest.mark.slow

TINY_PLUGIN = '''
from metactl import hookimpl
from metactl.algorithm import PaperResult
from metactl_plugins.prototypical import PrototypicalNetworks


class TinyPrototypes(PrototypicalNetworks):
    name = "tiny-proto"
    paper = "A test double of Snell et al. (2017)."
    paper_protocols = {"tiny": {"dataset": "omniglot", "way": 5, "shot": 1, "train_way": 5,
                                "train_query": 2, "episodes": 6, "val_every": 3,
                                "val_episodes": 4, "hidden": 8}}
    paper_results = (PaperResult("omniglot", 5, 1, 99.0, "tiny", source="Table 1"),
                     PaperResult("omniglot", 5, 5, 20.0, "tiny", ci95=0.5, tolerance=1.0))


@hookimpl
def metactl_register_algorithms(registry):
    registry.add(TinyPrototypes)
'''


@pytest.fixture(scope="module")
def environment(tmp_path_factory, omniglot_root) -> dict[str, str]:
    return {**fake_plugin(tmp_path_factory.mktemp("plugin"), "tiny-proto", TINY_PLUGIN),
            "METACTL_HOME": str(omniglot_root), "OMP_NUM_THREADS": "1"}


def reproduce(environment, tmp_path: Path, *options: str):
    return run_metactl("reproduce", "tiny-proto", "--out", str(tmp_path / "reports"), "--runs",
                       str(tmp_path / "runs"), "--device", "cpu", *options, env=environment)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_reproduce_trains_evaluates_and_reports_each_row(environment, tmp_path):
    result = reproduce(environment, tmp_path)
    assert result.returncode == 0, result.stderr
    report = read(tmp_path / "reports" / "tiny-proto.json")
    assert report["algorithm"] == "tiny-proto" and report["dataset"] == "omniglot"
    assert report["protocols"]["tiny"]["steps_done"] == report["protocols"]["tiny"][
        "total_steps"] == 6
    one_shot, five_shot = report["rows"]["5w1s"], report["rows"]["5w5s"]
    for row in (one_shot, five_shot):
        assert row["status"] == "final" and row["episodes"] == 1000 and row["query"] == 15
        assert 0 < row["ci95"] < 5
        assert row["difference"] == pytest.approx(row["ours"] - row["paper"], abs=0.011)
    evaluation = read(tmp_path / "runs" / "tiny-proto-tiny" / "evaluation-test-5way-1shot.json")
    assert one_shot["ours"] == pytest.approx(100 * evaluation["mean"], abs=0.005)
    assert one_shot["verdict"] == "below"  # a 6-step model is far from 99%
    assert five_shot["verdict"] == "above" and five_shot["paper_ci95"] == 0.5
    markdown = (tmp_path / "reports" / "tiny-proto.md").read_text()
    assert f"| 5-way 1-shot | {one_shot['ours']:.2f} ± {one_shot['ci95']:.2f} | 99 |" in markdown
    assert "metactl evaluate" in markdown and "--set train_way=5" in markdown
    assert "| 5-way 1-shot |" in result.stdout


def test_a_budget_stops_training_and_the_next_run_continues_bit_exactly(environment, tmp_path):
    whole = tmp_path / "whole"
    assert reproduce(environment, whole, "--setting", "5w1s").returncode == 0
    stopped = reproduce(environment, tmp_path, "--setting", "5w1s", "--budget", "0.01s")
    assert stopped.returncode == 0, stopped.stderr
    assert "budget is spent" in stopped.stderr
    partial = read(tmp_path / "reports" / "tiny-proto.json")
    assert partial["protocols"]["tiny"]["steps_done"] == 1  # each call trains one step at least
    assert partial["rows"]["5w1s"]["status"] == "pending"
    assert "not evaluated yet" in (tmp_path / "reports" / "tiny-proto.md").read_text()
    assert reproduce(environment, tmp_path, "--setting", "5w1s").returncode == 0
    final = read(tmp_path / "reports" / "tiny-proto.json")
    assert final["rows"]["5w1s"]["status"] == "final"
    assert final["rows"]["5w1s"]["ours"] == read(whole / "reports" / "tiny-proto.json")[
        "rows"]["5w1s"]["ours"]
    resumed, uninterrupted = (torch.load(folder / "runs" / "tiny-proto-tiny" / "checkpoints" /
                                         "last.pt", weights_only=True)["model"]
                              for folder in (tmp_path, whole))
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted)


def test_results_renders_results_md_and_check_catches_a_hand_edit(environment, tmp_path):
    assert reproduce(environment, tmp_path, "--setting", "5w1s").returncode == 0
    output = tmp_path / "RESULTS.md"
    rendered = run_metactl("results", str(tmp_path / "reports"), "-o", str(output))
    assert rendered.returncode == 0, rendered.stderr
    row = read(tmp_path / "reports" / "tiny-proto.json")["rows"]["5w1s"]
    assert f"| `tiny-proto` | 5-way 1-shot | {row['ours']:.2f} ± {row['ci95']:.2f} |" in (
        output.read_text())
    assert run_metactl("results", str(tmp_path / "reports"), "-o", str(output),
                       "--check").returncode == 0
    output.write_text(output.read_text().replace(f"{row['ours']:.2f}", "99.99"))
    checked = run_metactl("results", str(tmp_path / "reports"), "-o", str(output), "--check")
    assert checked.returncode != 0 and "is not what the reports" in checked.stderr


def test_dry_run_prints_rows_commands_and_an_estimate_and_writes_nothing(environment,
                                                                        tmp_path):
    result = reproduce(environment, tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "tiny-proto tiny -> 5w1s, 5w5s (6 steps at" in result.stdout
    assert "metactl train tiny-proto --out" in result.stdout
    assert "estimated total:" in result.stdout
    assert not (tmp_path / "reports").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--setting", "20w1s"], "reports no 20-way 1-shot result on omniglot"),
    (["--setting", "five"], "is not a setting"),
    (["--budget", "soon"], "is not a duration"),
    (["--set", "lr=0.1"], "takes device settings only, not lr"),
    (["--test-episodes", "0"], "must be at least 1"),
    (["--dataset", "mini-imagenet"], "has no paper results on mini-imagenet"),
])
def test_bad_input_is_one_line_and_writes_nothing(environment, tmp_path, options, message):
    result = reproduce(environment, tmp_path, *options)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists() and not (tmp_path / "runs").exists()


def test_unknown_algorithm_suggests_the_nearest_name(environment, tmp_path):
    result = run_metactl("reproduce", "prototypcal", "--out", str(tmp_path), env=environment)
    assert result.returncode != 0 and "Did you mean 'prototypical'" in result.stderr


def test_a_report_of_another_algorithm_is_refused_and_left_untouched(environment, tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    foreign = folder / "tiny-proto.json"
    foreign.write_text(json.dumps({"format": "metactl-reproduce-report", "version": 1,
                                   "algorithm": "maml", "dataset": "omniglot"}))
    before = foreign.read_bytes()
    result = reproduce(environment, tmp_path)
    assert result.returncode != 0 and "is the report of maml on omniglot" in result.stderr
    assert foreign.read_bytes() == before and not (tmp_path / "runs").exists()


def test_the_gpu_script_runs_every_row_in_its_tiny_cpu_mode(omniglot_root, tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_reproduce.sh"
    environment = {**os.environ, "METACTL_REPRODUCE_TINY": "1", "OMP_NUM_THREADS": "1",
                   "METACTL_HOME": str(omniglot_root),
                   "METACTL": str(Path(sys.executable).with_name("metactl"))}
    result = subprocess.run([str(script), str(tmp_path)], capture_output=True, text=True,
                            env=environment, timeout=900)
    assert result.returncode == 0, result.stderr
    rows = {name: read(tmp_path / f"{name}.json")["rows"] for name in
            ("maml", "metanet", "mann", "relation")}
    # The tiny mode leaves out MAML 20-way 5-shot, whose single step takes minutes on a CPU.
    assert sorted(rows["maml"]) == ["20w1s"] and sorted(rows["mann"]) == ["5w1s", "5w5s"]
    for report_rows in rows.values():
        for row in report_rows.values():
            assert row["episodes"] == 4 and row["ours"] is not None
            assert row["status"] == "partial" and row["at_step"] >= 1
    assert "| `maml` | 20-way 1-shot |" in (tmp_path / "RESULTS.md").read_text()
