"""Functional helpers for inner loops: a network's parameters as a dict of per-task tensors.

Shapes: ``T`` tasks, ``N`` examples per task. A *task parameter dict* maps each parameter name
of a module (as in ``module.named_parameters()``) to a tensor of shape ``(T, *parameter.shape)``:
one set of weights per task. :func:`task_forward` runs the module on every task with that task's
weights, batched over tasks with ``torch.func.vmap`` (or in a Python loop over tasks).

Second-order gradients are taken with ``torch.autograd.grad(..., create_graph=True)`` on the
per-task parameters; only the forward pass is vmapped. ``torch.func.grad`` nested inside
``vmap`` has been measured giving second-order MAML gradients wrong by ~2% on models with
batch norm, so it is not used here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

Parameters = dict[str, Tensor]
"""Name -> tensor of shape (tasks, *parameter shape)."""

TaskLoss = Callable[[Tensor, Tensor], Tensor]
"""``loss(predictions, targets) -> (tasks,)``: a loss per task, e.g. :func:`task_cross_entropy`."""

Forward = Callable[[Parameters, Tensor], Tensor]
"""``forward(parameters, inputs) -> predictions``: inputs (T, N, ...) -> predictions (T, N, ...)."""


def expand_parameters(module: nn.Module, tasks: int,
                      select: Callable[[str], bool] | None = None) -> Parameters:
    """The module's parameters repeated once per task, as views that keep the autograd graph.

    Gradients through the result reach the module's parameters, summed over tasks.

    Args:
        module: the network.
        tasks: T.
        select: which parameter names to include (default: all).

    Returns:
        name -> (T, *shape), for every selected parameter.
    """
    return {name: parameter.unsqueeze(0).expand(tasks, *parameter.shape)
            for name, parameter in module.named_parameters()
            if select is None or select(name)}


def task_forward(module: nn.Module, parameters: Mapping[str, Tensor], inputs: Tensor,
                 buffers: Mapping[str, Tensor] | None = None, batched: bool = True) -> Tensor:
    """Run ``module`` on each task's inputs with that task's parameters.

    Parameters missing from ``parameters`` are taken from the module, shared by all tasks. Batch
    norm sees one task at a time: its statistics are per task. A batch-norm layer that tracks
    running statistics needs per-task ``buffers`` (see :func:`task_buffers`) when it runs in
    training mode, which updates them in place.

    Args:
        module: a network mapping (N, ...) to (N, ...).
        parameters: name -> (T, *shape).
        inputs: (T, N, ...).
        buffers: name -> (T, *shape), per-task buffers (e.g. batch-norm running statistics).
        batched: one vmapped call over tasks (True) or a Python loop over tasks (False); the
            results are equal, the speed differs by device and size.

    Returns:
        (T, N, ...), the module's outputs per task.
    """
    parameters = dict(parameters)
    buffers = dict(buffers or {})
    if batched:
        _check_running_statistics(module, buffers)
        def call(task_parameters: Parameters, task_buffers: Parameters, task_inputs: Tensor):
            return functional_call(module, {**task_parameters, **task_buffers}, (task_inputs,))

        return vmap(call)(parameters, buffers, inputs)
    outputs = []
    for task in range(inputs.shape[0]):
        values = {name: value[task] for name, value in {**parameters, **buffers}.items()}
        outputs.append(functional_call(module, values, (inputs[task],)))
    return torch.stack(outputs)


def forward_per_task(module: nn.Module, inputs: Tensor) -> Tensor:
    """Run ``module`` on a batch of tasks in one call, with batch-norm statistics per task.

    In training mode, a batch-norm layer normalises each task's examples by that task's own
    mean and variance, as in a loop over tasks, but the tasks go through the network together
    (``vmap`` over per-task copies of the running statistics). The module's running statistics
    then take one update with the mean of the tasks' statistics. In evaluation mode, or with one
    task, or without batch norm, this is a plain forward of the flattened batch.

    Args:
        module: maps (N, ...) to (N, ...), with batch norm or not.
        inputs: (T, N, ...).

    Returns:
        (T, N, ...), the module's outputs per task.
    """
    tasks, count = inputs.shape[:2]
    statistics = {name: buffer for name, buffer in module.named_buffers()
                  if name.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    if tasks == 1 or not module.training or not statistics:
        outputs = module(inputs.flatten(0, 1))
        return outputs.view(tasks, count, *outputs.shape[1:])
    per_task = {name: buffer.unsqueeze(0).repeat(tasks, *([1] * buffer.dim()))
                for name, buffer in statistics.items()}
    parameters = dict(module.named_parameters())

    def call(task_buffers: Parameters, task_inputs: Tensor) -> Tensor:
        return functional_call(module, {**parameters, **task_buffers}, (task_inputs,))

    outputs = vmap(call)(per_task, inputs)
    with torch.no_grad():
        for name, buffer in statistics.items():
            updated = per_task[name]
            buffer.copy_(updated[0] if name.endswith("num_batches_tracked") else updated.mean(0))
    return outputs


def _check_running_statistics(module: nn.Module, buffers: Mapping[str, Tensor]) -> None:
    """vmap cannot update one set of running statistics from many tasks: say what to do."""
    for name, layer in module.named_modules():
        if (isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.training
                and layer.track_running_stats and f"{name}.running_mean" not in buffers):
            from metactl.errors import UsageError

            raise UsageError(
                f"batch-norm layer {name!r} keeps running statistics, which task_forward "
                "cannot update per task in training mode",
                "build the network with build_backbone(..., running_stats=False) (batch "
                "statistics, as in MAML), or pass per-task buffers=task_buffers(model, tasks)")


def task_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy per task.

    Args:
        logits: (T, N, classes).
        labels: int64, (T, N).

    Returns:
        (T,).
    """
    losses = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                         reduction="none")
    return losses.view(labels.shape).mean(1)


def task_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """The default loss per task: :func:`task_mse` for float targets (regression),
    :func:`task_cross_entropy` for integer labels. (T, N, ...) -> (T,)."""
    if targets.is_floating_point():
        return task_mse(predictions, targets)
    return task_cross_entropy(predictions, targets)


def task_mse(predictions: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error per task: (T, N, ...) and (T, N, ...) -> (T,)."""
    return (predictions - targets.to(predictions.dtype)).pow(2).flatten(1).mean(1)


def task_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct predictions per task: (T, N, classes), (T, N) -> (T,)."""
    return (logits.argmax(-1) == labels).to(logits.dtype).mean(1)


def task_gradients(losses: Tensor, parameters: Mapping[str, Tensor],
                   create_graph: bool = False) -> Parameters:
    """Gradient of each task's loss with respect to that task's parameters.

    Task ``t``'s loss depends only on slice ``t`` of each parameter, so the gradient of the sum
    of the losses is the stack of the per-task gradients.

    Args:
        losses: (T,).
        parameters: name -> (T, *shape); tensors that require grad.
        create_graph: keep the graph of the gradient (second-order terms).

    Returns:
        name -> (T, *shape); zeros where a parameter does not affect the loss.
    """
    names = list(parameters)
    gradients = torch.autograd.grad(losses.sum(), [parameters[name] for name in names],
                                    create_graph=create_graph, allow_unused=True)
    return {name: torch.zeros_like(parameters[name]) if gradient is None else gradient
            for name, gradient in zip(names, gradients, strict=True)}


def sgd_step(parameters: Mapping[str, Tensor], gradients: Mapping[str, Tensor],
             lr: float) -> Parameters:
    """``parameters - lr * gradients`` for every name in ``parameters``; out of place."""
    return {name: value - lr * gradients[name] if name in gradients else value
            for name, value in parameters.items()}


def flatten_parameters(parameters: Mapping[str, Tensor]) -> Tensor:
    """Concatenate per-task parameters into one vector per task: name -> (T, ...) to (T, P)."""
    return torch.cat([value.flatten(1) for value in parameters.values()], dim=1)


def unflatten_parameters(flat: Tensor, shapes: Mapping[str, torch.Size]) -> Parameters:
    """Inverse of :func:`flatten_parameters`: (T, P) to name -> (T, *shape), as views.

    Args:
        flat: (T, P).
        shapes: name -> the shape of one task's parameter, in flattening order.
    """
    parameters, start = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        parameters[name] = flat[:, start:start + size].view(flat.shape[0], *shape)
        start += size
    if start != flat.shape[1]:
        raise ValueError(f"{flat.shape[1]} values cannot fill parameters of {start} values")
    return parameters


def task_buffers(module: nn.Module, tasks: int, reset: bool = True) -> Parameters:
    """Per-task copies of the module's buffers, (T, *shape) each, to update in place.

    With ``reset``, batch-norm running statistics start from mean 0, variance 1 and a count
    of 0, as in a freshly built layer; other buffers are copied.
    """
    buffers = {}
    for name, buffer in module.named_buffers():
        value = buffer.detach().clone()
        if reset and name.endswith(("running_mean", "num_batches_tracked")):
            value = torch.zeros_like(value)
        elif reset and name.endswith("running_var"):
            value = torch.ones_like(value)
        buffers[name] = value.unsqueeze(0).repeat(tasks, *([1] * value.dim()))
    return buffers


@contextlib.contextmanager
def training_mode(module: nn.Module, mode: bool = True) -> Iterator[nn.Module]:
    """Temporarily put ``module`` (and its children) in training or evaluation mode."""
    previous = {child: child.training for child in module.modules()}
    module.train(mode)
    try:
        yield module
    finally:
        for child, training in previous.items():
            child.training = training


def preprocess_gradients(values: Tensor, power: float = 10.0) -> Tensor:
    """The log-and-sign input scaling of Andrychowicz et al. (2016), used by Ravi & Larochelle.

    ``x -> (log|x| / p, sign x)`` where ``|x| > e^-p``, else ``(-1, e^p x)``: two bounded inputs
    that keep both the magnitude (over many orders) and the sign of a gradient or a loss.

    Args:
        values: any shape (...).
        power: p.

    Returns:
        (..., 2).
    """
    magnitude = values.abs()
    large = magnitude > math.exp(-power)
    tiny = torch.finfo(values.dtype).tiny
    first = torch.where(large, magnitude.clamp_min(tiny).log() / power,
                        torch.full_like(values, -1.0))
    second = torch.where(large, values.sign(), values * math.exp(power))
    return torch.stack([first, second], dim=-1)


def mini_batch_indices(tasks: int, size: int, steps: int, batch_size: int,
                       device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> Tensor | None:
    """Which examples each task trains on at each step: ``steps`` mini-batches of ``batch_size``
    drawn without replacement, reshuffling each task's examples whenever they run out (a batch
    may span two passes). None when a batch would hold the whole set: use all of it each step.

    Returns:
        int64, (steps, T, batch_size), or None.
    """
    if batch_size <= 0 or batch_size >= size:
        return None
    passes = math.ceil(steps * batch_size / size)
    keys = torch.rand(tasks, passes, size, generator=generator)
    order = keys.argsort(-1).view(tasks, passes * size)[:, :steps * batch_size]
    return order.view(tasks, steps, batch_size).transpose(0, 1).to(device)


def select_examples(values: Tensor, indices: Tensor | None) -> Tensor:
    """Per-task examples: values (T, N, ...) and indices (T, B) -> (T, B, ...)."""
    if indices is None:
        return values
    rows = torch.arange(values.shape[0], device=values.device).unsqueeze(1)
    return values[rows, indices]
