"""The sinusoid regression tasks of the MAML paper (Finn, Abbeel & Levine 2017, section 5.1).

Each task is ``y = amplitude * sin(x - phase)`` with the amplitude drawn uniformly from
[0.1, 5.0], the phase from [0, pi] and the inputs from [-5, 5]. A task batch uses the same
:class:`~metactl.data.episodes.TaskBatch` as image tasks, with inputs of shape
(tasks, points, 1) in place of images, float targets of the same shape in place of labels,
and ``way = 1``.

Registered as the task family ``sinusoid`` by the hook at the bottom; torch is imported inside
the functions, so that listing the datasets does not load it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.algorithm import ModelSpec
from metactl.dataset import TaskFamily
from metactl.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from metactl.data.episodes import TaskBatch
    from metactl.engine.run import TrainedModel

NAME = "sinusoid"
GRID_POINTS = 200


@dataclass(frozen=True)
class SinusoidFamily:
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    inputs: tuple[float, float] = (-5.0, 5.0)

    def curve(self, x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
        """``amplitude * sin(x - phase)``; amplitude and phase broadcast against ``x``."""
        import torch

        return amplitude * torch.sin(x - phase)


def _uniform(shape: tuple[int, ...], bounds: tuple[float, float], generator: torch.Generator
             ) -> Tensor:
    import torch

    low, high = bounds
    return torch.rand(shape, generator=generator) * (high - low) + low


class SinusoidSampler:
    """Draws sinusoid tasks of ``shot`` support and ``query`` query points, seeded.

    ``classes`` of the returned batch holds each task's (amplitude, phase), (tasks, 2), so that
    a plot can draw the true curve.
    """

    def __init__(self, shot: int, query: int, seed: int = 0,
                 family: SinusoidFamily | None = None, device: torch.device | str = "cpu"
                 ) -> None:
        import torch

        if shot < 1 or query < 1:
            raise UsageError(f"sinusoid tasks need shot >= 1 and query >= 1, got {shot}/{query}",
                             "pass --shot 10 (the paper's K) and a positive --query")
        self.shot, self.query = shot, query
        self.family = family or SinusoidFamily()
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)

    def sample(self, tasks: int = 1) -> TaskBatch:
        import torch

        from metactl.data.episodes import TaskBatch

        amplitude = _uniform((tasks, 1, 1), self.family.amplitude, self.generator)
        phase = _uniform((tasks, 1, 1), self.family.phase, self.generator)
        x = _uniform((tasks, self.shot + self.query, 1), self.family.inputs, self.generator)
        y = self.family.curve(x, amplitude, phase)
        move = lambda tensor: tensor.to(self.device)  # noqa: E731
        return TaskBatch(
            support_images=move(x[:, :self.shot]), support_labels=move(y[:, :self.shot]),
            query_images=move(x[:, self.shot:]), query_labels=move(y[:, self.shot:]),
            classes=move(torch.cat([amplitude, phase], dim=-1).view(tasks, 2)),
            way=1, shot=self.shot, query=self.query)

    def fixed(self, tasks: int) -> list[TaskBatch]:
        """``tasks`` tasks drawn now, one batch each: the evaluation set for a seed."""
        return [self.sample(1) for _ in range(tasks)]


class SinusoidTasks(TaskFamily):
    """Finn, Abbeel & Levine (2017), section 5.1: K-shot regression of sine curves."""

    name = NAME
    title = "Sinusoid regression"
    summary = "sine regression tasks of the MAML paper, generated on the fly"
    citation = ("Finn, C., Abbeel, P., and Levine, S. (2017). Model-Agnostic Meta-Learning for "
                "Fast Adaptation of Deep Networks. ICML.")
    # K = 10 support points; the query points score the adapted model.
    settings = {"way": 1, "train_way": 1, "shot": 10, "query": 10, "val_episodes": 100}

    def model_spec(self) -> ModelSpec:
        return ModelSpec(1, 1, 1, way=1, task="regression")

    def sampler(self, shot: int, query: int, seed: int, device: torch.device
                ) -> SinusoidSampler:
        return SinusoidSampler(shot, query, seed=seed, device=device)

    def plot(self, trained: TrainedModel, steps: list[int], path: Path, *, shot: int | None,
             seed: int | None, device: torch.device) -> Path:
        return plot_one_task(trained, steps, path, shot=shot, seed=seed, device=device)


def plot_one_task(trained: TrainedModel, steps: list[int], path: Path, *, shot: int | None,
                  seed: int | None, device: torch.device) -> Path:
    """Plot the true curve of the first test task, its support points and the predictions
    after each number of inner steps."""
    import torch

    from metactl.algorithm import support_of
    from metactl.engine.evaluator import generated_test_tasks, with_steps
    from metactl.engine.plot import Series, line_plot

    batch = generated_test_tasks(SinusoidTasks(), trained.config, 1, shot, 1, seed, device)[0]
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


@hookimpl
def metactl_register_datasets(registry) -> None:
    registry.add(SinusoidTasks)
