"""The sinusoid regression tasks of the MAML paper (Finn, Abbeel & Levine 2017, section 5.1).

Each task is ``y = amplitude * sin(x - phase)`` with the amplitude drawn uniformly from
[0.1, 5.0], the phase from [0, pi] and the inputs from [-5, 5]. A task batch uses the same
:class:`~metactl.data.episodes.TaskBatch` as image tasks, with inputs of shape
(tasks, points, 1) in place of images, float targets of the same shape in place of labels,
and ``way = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from metactl.data.episodes import TaskBatch
from metactl.errors import UsageError

NAME = "sinusoid"


@dataclass(frozen=True)
class SinusoidFamily:
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    inputs: tuple[float, float] = (-5.0, 5.0)

    def curve(self, x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
        """``amplitude * sin(x - phase)``; amplitude and phase broadcast against ``x``."""
        return amplitude * torch.sin(x - phase)


def _uniform(shape: tuple[int, ...], bounds: tuple[float, float], generator: torch.Generator
             ) -> Tensor:
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
        if shot < 1 or query < 1:
            raise UsageError(f"sinusoid tasks need shot >= 1 and query >= 1, got {shot}/{query}",
                             "pass --shot 10 (the paper's K) and a positive --query")
        self.shot, self.query = shot, query
        self.family = family or SinusoidFamily()
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)

    def sample(self, tasks: int = 1) -> TaskBatch:
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
