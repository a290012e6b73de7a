"""Varying the inner steps at test time, and the MAML paper's sinusoid plot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from metactl.algorithm import support_of
from metactl.engine.evaluator import sinusoid_test_tasks
from metactl.engine.plot import Series, line_plot
from metactl.engine.run import TrainedModel
from metactl.errors import UsageError

GRID_POINTS = 200


def steps_setting(trained: TrainedModel) -> str:
    setting = trained.algorithm.test_steps_setting
    if setting is None:
        raise UsageError(f"{trained.algorithm.name} has no inner gradient steps to vary",
                         "use --inner-steps with a gradient-based algorithm such as maml")
    return setting


def with_steps(trained: TrainedModel, steps: int) -> TrainedModel:
    """A copy whose algorithm takes ``steps`` inner steps at test time."""
    algorithm = type(trained.algorithm)({**trained.algorithm.hparams,
                                         steps_setting(trained): steps})
    return replace(trained, algorithm=algorithm)


def plot_one_task(trained: TrainedModel, steps: list[int], path: Path, *, shot: int | None,
                  seed: int | None, device: torch.device) -> Path:
    """Plot the true curve of the first test task, its support points and the predictions
    after each number of inner steps."""
    batch = sinusoid_test_tasks(trained.config, 1, shot, 1, seed, device)[0]
    grid = torch.linspace(-5, 5, GRID_POINTS, device=device).view(1, GRID_POINTS, 1)
    amplitude, phase = batch.classes[0].tolist()
    xs = grid.view(-1).tolist()
    series = [Series("true curve", xs, (amplitude * torch.sin(grid - phase)).view(-1).tolist(),
                     (220, 40, 40)),
              Series(f"{batch.shot} support points", batch.support_images.view(-1).tolist(),
                     batch.support_labels.view(-1).tolist(), (30, 30, 30), markers=True)]
    colors = [(120, 160, 230), (40, 150, 60), (20, 60, 200), (160, 60, 200)]
    for index, count in enumerate(steps):
        algorithm = with_steps(trained, count).algorithm
        with algorithm.gradient_mode():
            predicted = algorithm.predict(trained.model, support_of(batch), grid).detach()
        label = "pre-update" if count == 0 else f"after {count} step{'s' * (count > 1)}"
        series.append(Series(label, xs, predicted.view(-1).tolist(), colors[index % 4]))
    title = (f"{trained.algorithm.name} ({trained.run.path.name}): amplitude {amplitude:.2f}, "
             f"phase {phase:.2f}")
    return line_plot(series, path, title, xlabel="input x", ylabel="output y")
