"""MAML on the sinusoid regression tasks, through the real command: train, evaluate after 0 and
1 inner steps, plot."""

from __future__ import annotations

import json

import pytest
from testsupport import png_pixels, run_metactl


@pytest.mark.slow
def test_maml_on_sinusoid_adapts_and_plots(tmp_path):
    run = tmp_path / "run"
    trained = run_metactl("train", "maml", "--dataset", "sinusoid", "--episodes", "12500",
                          "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    plot = tmp_path / "sinusoid.png"
    evaluated = run_metactl("evaluate", str(run), "--inner-steps", "0,1", "--episodes", "200",
                            "--plot", str(plot), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    before, after = json.loads(evaluated.stdout)
    assert before["metric"] == after["metric"] == "mse"
    assert (before["inner_steps"], after["inner_steps"]) == (0, 1)
    assert after["mean"] < 0.8 * before["mean"], (before, after)  # the same 200 tasks
    pixels = png_pixels(plot)  # matplotlib: curves in colour, black axes and labels
    assert ((pixels.max(-1).astype(int) - pixels.min(-1)) > 60).mean() > 0.002
    assert (pixels.min(-1) < 100).mean() > 0.002


def test_a_metric_method_refuses_regression_tasks(tmp_path):
    result = run_metactl("train", "prototypical", "--dataset", "sinusoid", "--out",
                         str(tmp_path / "run"))
    assert result.returncode != 0
    assert "does not handle regression tasks" in result.stderr
    assert "Traceback" not in result.stderr
