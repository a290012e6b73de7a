"""Reading run folders (runs list / show / compare) and plotting, on folders written here."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from testsupport import png_pixels

from metactl.engine.runs import compare_runs, find_runs, list_runs, read_metrics, summarize
from metactl.errors import UsageError


def write_run(folder: Path, *, algorithm="prototypical", dataset="omniglot", way=5, shot=1,
              episodes=100, meta_batch=4, record=None, metrics=(), evaluations=None,
              **settings) -> Path:
    folder.mkdir(parents=True)
    config = {"algorithm": algorithm, "dataset": dataset, "way": way, "shot": shot,
              "episodes": episodes, "meta_batch": meta_batch, "lr": 0.001, **settings}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if record is not None:
        (folder / "run.json").write_text(json.dumps(record))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for name, result in (evaluations or {}).items():
        (folder / f"{name}.json").write_text(json.dumps(result))
    return folder


TRAIN = [{"kind": "train", "step": s, "loss": 2.0 / s, "accuracy": 0.2 + 0.02 * s, "lr": 1e-3}
         for s in range(1, 11)]
VAL = [{"kind": "val", "step": 5, "accuracy": 0.61, "ci95": 0.03, "episodes": 20},
       {"kind": "val", "step": 10, "accuracy": 0.66, "ci95": 0.02, "episodes": 20}]
TEST = {"mean": 0.7, "ci95": 0.01, "episodes": 100, "way": 5, "shot": 1, "query": 15,
        "split": "test", "metric": "accuracy"}


def test_summary_counts_steps_and_episodes_and_picks_the_best_validation(tmp_path):
    run = write_run(tmp_path / "a", record={"status": "finished", "steps": {"done": 10}},
                    metrics=[*TRAIN, *VAL],
                    evaluations={"evaluation-test-5way-1shot": TEST,
                                 "evaluation-test-20way-1shot": {**TEST, "way": 20}})
    summary = summarize(run)
    assert (summary.steps_done, summary.steps_total) == (10, 25)
    assert (summary.episodes_done, summary.episodes_total) == (40, 100)
    assert summary.best_validation == {"metric": "accuracy", "mean": 0.66, "ci95": 0.02,
                                       "step": 10}
    assert summary.test == TEST and summary.status == "finished"


def test_runs_are_found_below_a_folder_and_filtered(tmp_path):
    write_run(tmp_path / "proto", record={"status": "finished"})
    write_run(tmp_path / "group" / "maml", algorithm="maml", record={"status": "failed"})
    write_run(tmp_path / "group" / "sine", algorithm="maml", dataset="sinusoid")
    assert [p.name for p in find_runs(tmp_path)] == ["maml", "sine", "proto"]
    assert find_runs(tmp_path / "proto") == [tmp_path / "proto"]
    assert [s.path.name for s in list_runs(tmp_path, algorithm="maml")] == ["maml", "sine"]
    assert [s.path.name for s in list_runs(tmp_path, dataset="sinusoid")] == ["sine"]
    assert [s.path.name for s in list_runs(tmp_path, status="failed")] == ["maml"]
    assert summarize(tmp_path / "group" / "sine").status == "unknown"  # no run.json yet


def test_a_running_run_whose_process_is_gone_is_shown_as_died(tmp_path):
    import socket
    import subprocess

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    record = {"status": "running", "host": socket.gethostname(), "pid": int(finished.stdout)}
    assert summarize(write_run(tmp_path / "a", record=record)).status == "died"


def test_a_torn_last_metrics_line_is_skipped(tmp_path):
    run = write_run(tmp_path / "a", metrics=TRAIN[:2])
    with (run / "metrics.jsonl").open("a") as stream:
        stream.write('{"kind": "train", "st')
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


@dataclass(frozen=True)
class PaperRow:
    dataset: str
    way: int
    shot: int
    accuracy: float
    ci95: float | None


def test_compare_shows_differing_settings_results_and_the_papers_figure(tmp_path, monkeypatch):
    from metactl_plugins.prototypical import PrototypicalNetworks

    monkeypatch.setattr(PrototypicalNetworks, "paper_results",
                        (PaperRow("omniglot", 5, 5, 99.7, None),
                         PaperRow("omniglot", 5, 1, 98.8, 0.2)), raising=False)
    first = write_run(tmp_path / "a", metrics=VAL, evaluations={
        "evaluation-test-5way-1shot": TEST})
    second = write_run(tmp_path / "b", lr=0.01, hidden=32)
    comparison = compare_runs([first, second])
    assert comparison.settings == {"lr": [0.001, 0.01], "hidden": [None, 32]}
    assert comparison.results["best validation"] == ["66.00 ± 2.00", "-"]
    assert comparison.results["test-5way-1shot"] == ["70.00 ± 1.00", "-"]
    assert comparison.results["paper"] == ["98.80 ± 0.20", "98.80 ± 0.20"]


def test_curves_are_drawn_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    from metactl.engine.curves import plot_curves

    runs = [write_run(tmp_path / name, metrics=[*TRAIN, *VAL]) for name in ("a", "b")]
    output = plot_curves(runs, tmp_path / "curves.png")
    pixels = png_pixels(output)
    coloured = (pixels.max(-1).astype(int) - pixels.min(-1)) > 60
    assert coloured.mean() > 0.002 and (pixels.min(-1) < 100).mean() > 0.005
    with pytest.raises(UsageError, match="no metrics to plot"):
        plot_curves([write_run(tmp_path / "empty")], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_without_matplotlib_plotting_says_how_to_install_it(tmp_path, monkeypatch):
    from metactl.engine.curves import plot_curves

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    run = write_run(tmp_path / "a", metrics=TRAIN)
    with pytest.raises(UsageError) as raised:
        plot_curves([run], tmp_path / "curves.png")
    assert raised.value.one_line() == ("plotting needs the matplotlib package, which is not "
                                       "installed. Pip install 'metactl[plot]'.")
