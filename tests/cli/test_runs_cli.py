"""A run's record, console log and loggers, and `metactl runs list / show / compare / plot`,
through the real command on a short real training."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from testsupport import fake_plugin, png_pixels, run_metactl

TRAIN = ["train", "prototypical", "--steps", "6", "--train-way", "5", "--set", "train_query=5",
         "--set", "val_every=3", "--set", "val_episodes=5", "--set", "logger=csv,tensorboard",
         "--device", "cpu"]


def ok(*arguments: str, **options) -> subprocess.CompletedProcess:
    result = run_metactl(*arguments, **options)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def trained(omniglot_root, tmp_path_factory) -> Path:
    """A 6-step run, evaluated twice (plain, and with --set distance=cosine)."""
    work = tmp_path_factory.mktemp("runs-cli")
    env = {"METACTL_HOME": str(omniglot_root)}
    run = work / "runs" / "proto"
    ok(*TRAIN, "--out", str(run), env=env, cwd=work)
    ok("evaluate", str(run), "--episodes", "10", env=env)
    ok("evaluate", str(run), "--episodes", "10", "--set", "distance=cosine", env=env)
    return run


pytestmark = pytest.mark.slow


def test_run_json_records_provenance_and_status(trained):
    record = json.loads((trained / "run.json").read_text())
    assert record["status"] == "finished" and record["algorithm"] == "prototypical"
    assert record["steps"] == {"done": 6, "total": 6}
    assert record["episodes"] == {"done": 6, "total": 6}
    assert record["command"][1:4] == ["train", "prototypical", "--steps"]
    assert record["device"].startswith("cpu") and record["host"]
    assert set(record["versions"]) == {"metactl", "torch", "python"}
    assert record["started"] <= record["ended"]
    assert record["plugin"]["module"] == "metactl_plugins.prototypical"
    assert record["plugin"]["distribution"].startswith("metactl ")
    assert record["git"]["project"] is None  # trained outside any git checkout


def test_console_log_keeps_what_the_console_showed(trained):
    log = (trained / "console.log").read_text()
    assert "training prototypical on omniglot" in log
    assert "step 6/6 (episodes 6/6): loss" in log
    assert "step 6/6: validation accuracy" in log
    assert "evaluate: 5-way 1-shot test: accuracy" in log


def test_csv_logger_matches_the_json_lines(trained):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    for kind in ("train", "val"):
        with (trained / f"metrics-{kind}.csv").open(newline="") as stream:
            rows = list(csv.DictReader(stream))
        expected = [r for r in records if r["kind"] == kind]
        assert [int(row["step"]) for row in rows] == [r["step"] for r in expected]
        assert [float(row["accuracy"]) for row in rows] == [r["accuracy"] for r in expected]


def test_tensorboard_logger_writes_readable_events(trained):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(trained / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "val/accuracy"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("val/accuracy")] == [3, 6]


def test_runs_list_shows_one_line_per_run_and_filters(trained):
    folder = str(trained.parent)
    text = ok("runs", "list", folder).stdout.splitlines()
    assert text[0].split()[:6] == ["run", "algorithm", "dataset", "setting", "steps", "episodes"]
    assert "prototypical  omniglot  5-way 1-shot  6/6    6/6" in text[1]
    assert text[1].rstrip().endswith("finished")
    (entry,) = json.loads(ok("runs", "list", folder, "--json").stdout)
    assert entry["steps"] == {"done": 6, "total": 6} and entry["status"] == "finished"
    assert 0 < entry["test"]["mean"] <= 1 and entry["test"]["episodes"] == 10
    assert entry["best_validation"]["step"] in (3, 6)
    assert json.loads(ok("runs", "list", folder, "--algorithm", "maml", "--json").stdout) == []
    assert len(json.loads(ok("runs", "list", folder, "--dataset", "omniglot", "--json")
                          .stdout)) == 1
    assert "no runs" in ok("runs", "list", folder, "--status", "failed").stderr


def test_runs_show_gives_config_provenance_and_evaluations(trained):
    details = json.loads(ok("runs", "show", str(trained), "--json").stdout)
    assert details["config"]["train_way"] == 5 and details["record"]["status"] == "finished"
    assert set(details["evaluations"]) == {"evaluation-test-5way-1shot",
                                           "evaluation-test-5way-1shot-distance=cosine"}
    cosine = details["evaluations"]["evaluation-test-5way-1shot-distance=cosine"]
    assert cosine["settings"] == {"distance": "cosine"}
    text = ok("runs", "show", str(trained)).stdout
    assert "Provenance:" in text and "torch" in text and "Evaluations:" in text


def test_runs_compare_puts_differing_settings_side_by_side(trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump({**config, "lr": 0.01}))
    comparison = json.loads(ok("runs", "compare", str(trained), str(other), "--json").stdout)
    assert comparison["settings"] == {"lr": [0.001, 0.01]}
    assert comparison["results"]["status"] == ["finished", "finished"]
    assert comparison["results"]["paper"] == ["98.80", "98.80"]  # Snell et al., 5-way 1-shot
    assert "test-5way-1shot-distance=cosine" in comparison["results"]
    text = ok("runs", "compare", str(trained), str(other)).stdout
    assert any(line.split()[:3] == ["lr", "0.001", "0.01"] for line in text.splitlines())


def test_runs_plot_draws_the_learning_curves(trained, tmp_path):
    output = tmp_path / "curves.png"
    ok("runs", "plot", str(trained), str(trained), "-o", str(output))
    pixels = png_pixels(output)
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 900
    coloured = (pixels.max(-1).astype(int) - pixels.min(-1)) > 60
    assert coloured.mean() > 0.002, "no curve was drawn"
    assert (pixels.min(-1) < 100).mean() > 0.005, "no axes or text"


def test_failed_runs_are_recorded_and_plugin_errors_are_one_line(tmp_path):
    """An error raised inside a plugin: one line naming it (a traceback with --debug), and the
    run records status failed with the error."""
    env = fake_plugin(tmp_path / "site", "broken-plugin", BROKEN_PLUGIN)
    run = tmp_path / "run"
    arguments = ["train", "breaks-later", "--dataset", "sinusoid", "--steps", "3", "--set",
                 "val_episodes=0", "--out", str(run)]
    result = run_metactl(*arguments, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: plugin broken-plugin (algorithm breaks-later, broken-plugin "
                           "0.1) failed: RuntimeError: the third step breaks. Rerun with")
    assert "metactl --debug" in line
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and "the third step breaks" in record["error"]
    assert "training stopped: RuntimeError" in (run / "console.log").read_text()
    debug = run_metactl("--debug", *arguments[:-1], str(tmp_path / "again"), env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


BROKEN_PLUGIN = '''
from torch import nn
from metactl import hookimpl
from metactl.algorithm import Algorithm


class BreaksLater(Algorithm):
    name, family, tasks = "breaks-later", "model", ("classification", "regression")

    def build_model(self, spec):
        return nn.Linear(spec.channels, 1)

    def task_state(self, model, support):
        return None

    def logits(self, model, state, query_images):
        return model(query_images)

    def meta_gradient(self, model, batch):
        if self.progress > 0.5:
            raise RuntimeError("the third step breaks")
        return super().meta_gradient(model, batch)


@hookimpl
def metactl_register_algorithms(registry):
    registry.add(BreaksLater)
'''
