"""The short-run reports (benchmarks/mini_imagenet_cpu.py) rendered into RESULTS.md."""

from __future__ import annotations

import json

from testsupport import run_metactl

from metactl.engine.reports import (
    SHORT_RUNS_FORMAT,
    beats_untrained,
    find_short_runs,
    render_results,
)


def accuracy(mean: float, ci95: float, episodes: int = 150) -> dict:
    return {"mean": mean, "ci95": ci95, "episodes": episodes, "way": 5, "shot": 1, "query": 15,
            "split": "test", "metric": "accuracy"}


MACHINE = {"cpu": "Test CPU", "cpu_capability": "AVX2", "cores": 2, "torch_threads": 1,
           "torch": "2.0"}


def entry(untrained: dict, trained: dict, paper: list | None = None, **extra) -> dict:
    return {"settings": {"hidden": 16, "episodes": 800}, "steps": 800, "train_seconds": 300.0,
            "train_cpu_seconds": 240.0, "eval_seconds": 30.0, "eval_cpu_seconds": 20.0,
            "untrained": untrained, "trained": trained, "paper": paper or [],
            "command": "python benchmarks/mini_imagenet_cpu.py --algorithms x",
            "machine": MACHINE, "date": "2026-12-01T03:00:00+00:00", **extra}


def short_runs_report() -> dict:
    paper = [{"way": 5, "shot": 1, "accuracy": 43.44, "ci95": 0.77, "source": "Table 1"}]
    return {"format": SHORT_RUNS_FORMAT, "version": 1, "dataset": "mini-imagenet",
            "title": "mini-ImageNet: short CPU runs, not the paper protocols",
            "algorithms": {
                "learner": entry(accuracy(0.25, 0.01), accuracy(0.33, 0.012), paper),
                "stuck": entry(accuracy(0.25, 0.01), accuracy(0.265, 0.01),
                               note="measured by an earlier version")}}


def test_a_row_beats_the_untrained_model_only_when_the_intervals_do_not_overlap():
    assert beats_untrained(entry(accuracy(0.25, 0.01), accuracy(0.30, 0.01)))
    assert not beats_untrained(entry(accuracy(0.25, 0.01), accuracy(0.265, 0.01)))
    assert not beats_untrained(entry(accuracy(0.25, 0.01), accuracy(0.20, 0.01)))


def test_the_section_has_one_row_per_algorithm_and_the_paper_protocols(tmp_path):
    report = {**short_runs_report(), "_path": tmp_path / "reports" / "mini" / "short.json"}
    text = render_results([], tmp_path, short_runs=[report])
    lines = text.splitlines()
    assert "## mini-ImageNet: short CPU runs, not the paper protocols" in lines
    assert ("| `learner` | hidden=16, episodes=800 | 800 | 4.0 min | 25.00 ± 1.00 | "
            "33.00 ± 1.20 | +8.00 | yes |") in lines
    assert ("| `stuck` | hidden=16, episodes=800 | 800 | 4.0 min | 25.00 ± 1.00 | "
            "26.50 ± 1.00 | +1.50 | **no** |") in lines
    assert "150 fixed 5-way 1-shot test episodes (seed 0) with 15 queries per class" in text
    assert "[reports/mini/short.json](reports/mini/short.json)" in text
    assert ("| `learner` | `metactl reproduce learner --dataset mini-imagenet` | "
            "5-way 1-shot 43.44 ± 0.77 (Table 1) |") in lines
    assert "not declared yet: `stuck`." in text
    assert "- `stuck`: measured by an earlier version." in lines


def test_short_run_reports_are_found_by_their_format(tmp_path):
    folder = tmp_path / "reports" / "mini-imagenet"
    folder.mkdir(parents=True)
    (folder / "short-cpu.json").write_text(json.dumps(short_runs_report()))
    (folder / "other.json").write_text(json.dumps({"format": "something-else"}))
    (folder / "broken.json").write_text("{")
    found = find_short_runs(tmp_path / "reports")
    assert [report["_path"].name for report in found] == ["short-cpu.json"]


def test_metactl_results_renders_a_short_run_report(tmp_path):
    folder = tmp_path / "reports" / "mini-imagenet"
    folder.mkdir(parents=True)
    (folder / "short-cpu.json").write_text(json.dumps(short_runs_report()))
    output = tmp_path / "RESULTS.md"
    rendered = run_metactl("results", str(tmp_path / "reports"), "-o", str(output))
    assert rendered.returncode == 0, rendered.stderr
    assert "| `stuck` |" in output.read_text(encoding="utf-8")
    checked = run_metactl("results", str(tmp_path / "reports"), "-o", str(output), "--check")
    assert checked.returncode == 0, checked.stderr


def test_a_report_with_no_rows_yet_still_renders(tmp_path):
    report = {**short_runs_report(), "algorithms": {}, "_path": tmp_path / "short.json"}
    text = render_results([], tmp_path, short_runs=[report])
    assert "## mini-ImageNet: short CPU runs, not the paper protocols" in text
    assert "| algorithm |" not in text
