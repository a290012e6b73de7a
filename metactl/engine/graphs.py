"""How the trainer computes a step's meta-gradient: plainly, or replayed from a CUDA graph.

On a GPU, a few-shot step is hundreds of small kernels, and launching them from Python leaves
the GPU mostly idle. :class:`CapturedGradient` records the kernels of one meta-gradient
(forward, backward, and for MAML the inner loop with its double backward) once, into a CUDA
graph, and then replays them with each new batch copied into the same input buffers. The outer
optimizer steps outside the graph (fused, a few kernels), so learning-rate schedules and
checkpoints work as usual.

A step can be captured when its shapes are fixed and it never waits for the GPU (no ``.item()``,
no data-dependent shapes, no copy from host memory): algorithms say so with
``DeviceSettings(cuda_graphs=True)``. On the CPU, :class:`CapturedGradient` runs the same
static-buffer code eagerly: the twin that tests compare with :class:`PlainGradient`.
"""

from __future__ import annotations

import contextlib
from dataclasses import fields, replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from metactl.algorithm import Algorithm, StepResult
    from metactl.data.episodes import TaskBatch
    from metactl.engine.device import Placement

WARM_UP_STEPS = 3  # on a side stream before capture: cuDNN autotuning, lazy allocations


class PlainGradient:
    """Zero the gradients, then ``algorithm.meta_gradient`` under the run's autocast."""

    def __init__(self, algorithm: Algorithm, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, placement: Placement) -> None:
        self.algorithm, self.model, self.optimizer = algorithm, model, optimizer
        self.placement = placement

    def __call__(self, batch: TaskBatch) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        with self.placement.autocast():
            return self.algorithm.meta_gradient(self.model, batch)


class CapturedGradient(PlainGradient):
    """The meta-gradient of fixed-shape batches, from static input buffers: captured in a CUDA
    graph at the first call and replayed after (on CUDA), or run eagerly (on the CPU).

    After a call the parameters' ``.grad`` hold the batch's meta-gradient, as after
    :class:`PlainGradient`; on CUDA they are the graph's own tensors, so nothing may set them
    to ``None`` between steps. Batch-norm running statistics and the random state are those of
    a plain step: the warm-up steps before capture are undone.
    """

    def __init__(self, algorithm: Algorithm, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, placement: Placement) -> None:
        super().__init__(algorithm, model, optimizer, placement)
        self.inputs: TaskBatch | None = None
        self.result: StepResult | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, batch: TaskBatch) -> StepResult:
        if self.inputs is None:
            self.inputs = _copy_of(batch)
            if self.placement.device.type == "cuda":
                self._capture()
        else:
            _copy_into(self.inputs, batch)
        if self.graph is None:
            self.optimizer.zero_grad(set_to_none=True)
            self.result = self._gradient()
        else:
            self.graph.replay()
        return self.result

    def _gradient(self) -> StepResult:
        with self._autocast():
            return self.algorithm.meta_gradient(self.model, self.inputs)

    def _autocast(self) -> contextlib.AbstractContextManager:
        # Autocast's cache of cast weights would be baked into the graph and go stale.
        placement = self.placement
        if placement.mixed_precision is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if placement.mixed_precision == "bf16" else torch.float16
        return torch.autocast(placement.device.type, dtype=dtype, cache_enabled=False)

    def _capture(self) -> None:
        saved = {name: value.clone() for name, value in self.model.named_buffers()}
        rng = torch.cuda.get_rng_state(self.placement.device)
        side = torch.cuda.Stream(self.placement.device)
        side.wait_stream(torch.cuda.current_stream(self.placement.device))
        with torch.cuda.stream(side):
            for _ in range(WARM_UP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self._gradient()
        torch.cuda.current_stream(self.placement.device).wait_stream(side)
        with torch.no_grad():
            for name, value in self.model.named_buffers():
                value.copy_(saved[name])
        torch.cuda.set_rng_state(rng, self.placement.device)
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.result = self._gradient()


def _copy_of(batch: TaskBatch) -> TaskBatch:
    return replace(batch, **{name: value.clone() for name, value in _tensors(batch).items()})


def _copy_into(inputs: TaskBatch, batch: TaskBatch) -> None:
    for name, value in _tensors(batch).items():
        static = getattr(inputs, name)
        if static.shape != value.shape:
            raise ValueError(f"a captured step needs batches of one shape: {name} was "
                             f"{tuple(static.shape)}, now {tuple(value.shape)}")
        static.copy_(value, non_blocking=True)


def _tensors(batch: TaskBatch) -> dict[str, torch.Tensor]:
    return {field.name: getattr(batch, field.name) for field in fields(batch)
            if isinstance(getattr(batch, field.name), torch.Tensor)}


def gradient_step(algorithm: Algorithm, model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer, placement: Placement) -> PlainGradient:
    """The meta-gradient computation a run uses: captured where the placement says so."""
    kind = CapturedGradient if placement.cuda_graphs else PlainGradient
    return kind(algorithm, model, optimizer, placement)
