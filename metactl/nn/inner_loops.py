"""Inner-loop strategies of the optimization-based family, reusable by any plugin.

Each class implements :class:`metactl.algorithm.InnerLoop`: ``adapt(algorithm, model, support)``
returns the task state that ``algorithm.logits(model, state, images)`` reads. The strategies run
the learner through that same ``algorithm.logits``, with the state they are building, so an
algorithm only has to write ``logits`` for the state its inner loop returns:

- :class:`GradientSteps` (MAML, first-order MAML): a parameter dict, name -> (T, *shape);
  ``logits`` is typically ``task_forward(model, state, images)``.
- :class:`ReptileSteps` (Reptile): the same, detached; Adam's state fresh per task or kept
  across tasks in the model's :class:`InnerAdamState`.
- :class:`LSTMUpdate` (Meta-Learner LSTM): a :class:`LearnerState` (parameters and per-task
  batch-norm statistics) of ``model.learner``.

Every strategy also has ``adaptation(...)``, which returns an :class:`Adaptation` with the inner
losses, and the gradient-based ones a ``run(forward, parameters, inputs, targets)`` that needs no
algorithm at all. The default loss is cross-entropy for integer labels and mean squared error
for float targets (regression), per task; any ``loss(predictions, targets) -> (T,)`` will do.

All tasks of a batch adapt together: per-task parameters of shape (T, ...), one batched forward
(see :func:`metactl.nn.functional.task_forward`), per-task gradients from one
``torch.autograd.grad`` call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from metactl.nn.functional import (
    Forward,
    Parameters,
    TaskLoss,
    expand_parameters,
    flatten_parameters,
    mini_batch_indices,
    select_examples,
    sgd_step,
    task_buffers,
    task_gradients,
    task_loss,
    training_mode,
    unflatten_parameters,
)

if TYPE_CHECKING:
    from metactl.algorithm import Algorithm, LabelledImages

INNER_OPTIMIZERS = ("sgd", "adam")


@dataclass
class Adaptation:
    """What an inner loop produced for a batch of tasks.

    Attributes:
        parameters: the adapted parameters, name -> (T, *shape).
        losses: the inner (support) loss before each step, detached, (steps, T).
        buffers: per-task buffers the loop kept (batch-norm statistics), name -> (T, *shape).
        moments: the inner optimizer's final state, ``{"first": ..., "second": ...}`` of
            name -> (T, *shape), for loops that have one (:class:`ReptileSteps`).
    """

    parameters: Parameters
    losses: Tensor
    buffers: Parameters = field(default_factory=dict)
    moments: dict[str, Parameters] = field(default_factory=dict)


@dataclass
class LearnerState:
    """The task state of :class:`LSTMUpdate`: adapted learner parameters and the batch-norm
    running statistics gathered while adapting, both name -> (T, *shape)."""

    parameters: Parameters
    buffers: Parameters


def _stack_losses(losses: list[Tensor], tasks: int, like: Tensor) -> Tensor:
    return torch.stack(losses) if losses else like.new_zeros(0, tasks)


def algorithm_forward(algorithm: Algorithm, model: nn.Module):
    """``forward(parameters, inputs)``: the algorithm's logits with per-task parameters."""

    def forward(parameters: Parameters, inputs: Tensor) -> Tensor:
        return algorithm.logits(model, parameters, inputs)

    return forward


class _ParameterLoop:
    """Inner loops whose task state is the adapted parameters of :meth:`adaptation`."""

    def adapt(self, algorithm: Algorithm, model: nn.Module, support: LabelledImages
              ) -> Parameters:
        """Adapted parameters, name -> (T, *shape), of the support sets (T, S, C, H, W)."""
        return self.adaptation(algorithm, model, support).parameters


class GradientSteps(_ParameterLoop):
    """``steps`` steps of gradient descent on each task's support loss, from the model's
    parameters (MAML's inner loop: Finn, Abbeel & Levine 2017).

    phi_0 = theta, phi_{k+1} = phi_k - lr * grad L_support(phi_k). With second-order terms the
    graph of every gradient is kept (``create_graph=True``) so the outer loss differentiates
    through the whole loop; ``first_order=True`` treats the inner gradients as constants, so
    the meta-gradient is the query-loss gradient at the adapted parameters and memory does not
    grow with the number of steps (each step's graph is freed once its gradient is taken).

    Second-order terms are built only where they can be used: in training mode
    (``model.training``) with gradients enabled. In evaluation mode the loop takes
    ``test_steps`` steps, first order.

    Args:
        steps: inner steps in training.
        lr: inner learning rate (alpha).
        first_order: drop the second-order terms.
        test_steps: inner steps in evaluation mode (default: ``steps``).
        loss: ``loss(predictions, targets) -> (T,)``; default :func:`task_loss` (cross-entropy
            for integer labels, mean squared error for float targets).
        select: which parameter names adapt (default: all); the others are shared by all tasks
            as they are (e.g. ``lambda name: name.startswith("classifier")`` adapts only the
            head).
    """

    def __init__(self, steps: int = 1, lr: float = 0.4, first_order: bool = False,
                 test_steps: int | None = None, loss: TaskLoss | None = None,
                 select: Callable[[str], bool] | None = None) -> None:
        if steps < 0 or (test_steps is not None and test_steps < 0):
            raise ValueError("inner steps must be >= 0")
        self.steps, self.lr, self.first_order = steps, lr, first_order
        self.test_steps = steps if test_steps is None else test_steps
        self.loss = loss or task_loss
        self.select = select

    def steps_for(self, training: bool) -> int:
        return self.steps if training else self.test_steps

    def adaptation(self, algorithm: Algorithm, model: nn.Module, support: LabelledImages
                   ) -> Adaptation:
        forward = algorithm_forward(algorithm, model)
        training = model.training
        return self.run(forward, expand_parameters(model, support.tasks, self.select),
                        support.images, support.labels, steps=self.steps_for(training),
                        create_graph=(not self.first_order and training
                                      and torch.is_grad_enabled()))

    def run(self, forward: Forward, parameters: Parameters, inputs: Tensor, targets: Tensor,
            *, steps: int | None = None, create_graph: bool | None = None) -> Adaptation:
        """The loop itself, for any model and loss.

        Args:
            forward: ``forward(parameters, inputs) -> predictions`` (T, N, ...).
            parameters: starting parameters, name -> (T, *shape), e.g.
                :func:`metactl.nn.functional.expand_parameters` of the model.
            inputs: (T, N, ...).
            targets: (T, N, ...), as ``loss`` expects.
            steps: default ``self.steps``.
            create_graph: keep second-order terms; default: unless ``first_order``, when
                gradients are enabled.

        Returns:
            The adapted parameters (connected to ``parameters`` in the autograd graph when
            gradients are enabled) and the inner losses.
        """
        steps = self.steps if steps is None else steps
        if create_graph is None:
            create_graph = not self.first_order and torch.is_grad_enabled()
        history = []
        for _ in range(steps):
            with torch.enable_grad():
                if create_graph:
                    current = parameters
                    wanted = {name: value for name, value in current.items()
                              if value.requires_grad}
                else:  # a graph of its own, freed once the gradient is taken
                    current = {name: value.detach().requires_grad_()
                               for name, value in parameters.items()}
                    wanted = current
                losses = self.loss(forward(current, inputs), targets)
                gradients = task_gradients(losses, wanted, create_graph=create_graph)
            parameters = sgd_step(parameters, gradients, self.lr)
            history.append(losses.detach())
        return Adaptation(parameters, _stack_losses(history, targets.shape[0], targets.float()))


class InnerAdamState(nn.Module):
    """Adam's moment estimates and step count, kept from task to task (the authors' Reptile
    code runs one TensorFlow Adam optimizer for every task, resetting only the weights).

    Held by the model as ``model.inner_optimizer_state`` (see :func:`attach_inner_state`) so
    that checkpoints, resuming and evaluation carry it. Buffers: ``first`` and ``second``
    moments shaped like each parameter of the model (not per task), and ``steps``, the inner
    steps taken so far (for Adam's bias correction).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.names = [name for name, _ in module.named_parameters()]
        for name, parameter in module.named_parameters():
            self.register_buffer(self._key("first", name), torch.zeros_like(parameter.detach()))
            self.register_buffer(self._key("second", name), torch.zeros_like(parameter.detach()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _key(moment: str, name: str) -> str:
        return f"{moment}__{name.replace('.', '__')}"

    def moment(self, which: str, name: str) -> Tensor:
        """The kept ``first`` or ``second`` moment of parameter ``name``, (*shape)."""
        return getattr(self, self._key(which, name))


def attach_inner_state(model: nn.Module) -> nn.Module:
    """Give ``model`` an :class:`InnerAdamState` for :class:`ReptileSteps` with ``keep_state``;
    returns the model."""
    model.inner_optimizer_state = InnerAdamState(model)
    return model


class ReptileSteps(_ParameterLoop):
    """Plain training on each task: ``steps`` steps of SGD or Adam on mini-batches of the support
    set, from the model's parameters, with no graph back to them (Reptile's inner loop: Nichol,
    Achiam & Schulman 2018).

    Adam's state starts fresh for every task, or, with ``keep_state``, from the model's
    :class:`InnerAdamState` as in the authors' code, where one optimizer serves every task in
    turn. The tasks of a batch run side by side, each from the kept state; in training the
    state then takes their moments as if the tasks had run one after another (each task's
    contribution decayed by the steps of the tasks after it, the step count advanced by
    ``tasks * steps``). Evaluation reads the state and leaves it unchanged, as the authors'
    evaluation restores it.

    Args:
        steps: inner steps in training (``model.training``).
        lr: inner learning rate.
        optimizer: ``"adam"`` (the paper's, with beta1 = 0) or ``"sgd"``.
        batch_size: examples per step in training; 0 or at least the support size: all.
        test_steps, test_batch_size: the same in evaluation mode.
        betas, eps: Adam's.
        loss: ``loss(predictions, targets) -> (T,)``; default :func:`task_loss` (cross-entropy
            for integer labels, mean squared error for float targets).
        keep_state: carry Adam's state across tasks in ``model.inner_optimizer_state``.
    """

    def __init__(self, steps: int = 5, lr: float = 1e-3, optimizer: str = "adam",
                 batch_size: int = 10, test_steps: int | None = None,
                 test_batch_size: int | None = None,
                 betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8,
                 loss: TaskLoss | None = None, keep_state: bool = False) -> None:
        if optimizer not in INNER_OPTIMIZERS:
            from metactl.errors import UsageError

            raise UsageError(f"unknown inner optimizer {optimizer!r}",
                             f"use one of {', '.join(INNER_OPTIMIZERS)}")
        self.steps, self.lr, self.optimizer, self.batch_size = steps, lr, optimizer, batch_size
        self.test_steps = steps if test_steps is None else test_steps
        self.test_batch_size = batch_size if test_batch_size is None else test_batch_size
        self.betas, self.eps = betas, eps
        self.loss = loss or task_loss
        self.keep_state = keep_state and optimizer == "adam"

    def adaptation(self, algorithm: Algorithm, model: nn.Module, support: LabelledImages
                   ) -> Adaptation:
        """Adapted parameters (detached from the model's) and the support losses."""
        forward = algorithm_forward(algorithm, model)
        start = {name: value.detach() for name, value
                 in expand_parameters(model, support.tasks).items()}
        training = model.training
        kept = model.inner_optimizer_state if self.keep_state else None
        adaptation = self.run(forward, start, support.images, support.labels,
                              steps=self.steps if training else self.test_steps,
                              batch_size=self.batch_size if training else self.test_batch_size,
                              state=kept)
        if kept is not None and training:
            self._keep(kept, adaptation.moments, self.steps)
        return adaptation

    def _start_moments(self, parameters: Parameters, state: InnerAdamState | None
                       ) -> tuple[Parameters, Parameters, int]:
        if state is None:
            zeros = {name: torch.zeros_like(value) for name, value in parameters.items()}
            return zeros, {name: value.clone() for name, value in zeros.items()}, 0
        first, second = ({name: state.moment(which, name).unsqueeze(0).expand_as(value).clone()
                          for name, value in parameters.items()}
                         for which in ("first", "second"))
        return first, second, int(state.steps)

    def _keep(self, state: InnerAdamState, moments: dict[str, Parameters], steps: int) -> None:
        """Fold the tasks' final moments, name -> (T, *shape), into the kept state as if the T
        tasks had run in turn: m <- beta^(T k) m + sum_t beta^((T - 1 - t) k) (m_t - beta^k m).
        Under torchrun, each process holds a consecutive share of the meta-batch's tasks; the
        shares' sums are added over the processes, each decayed by the tasks after it."""
        from metactl.engine.distributed import current

        cluster = current()
        tasks = next(iter(moments["second"].values())).shape[0]
        later = (cluster.world_size - 1 - cluster.rank) * tasks  # tasks on the ranks after
        everyone = cluster.world_size * tasks
        with torch.no_grad():
            for which, beta in zip(("first", "second"), self.betas, strict=True):
                for name, final in moments[which].items():
                    kept = state.moment(which, name)
                    weights = final.new_tensor([beta ** ((later + tasks - 1 - t) * steps)
                                                for t in range(tasks)])
                    increments = final - beta ** steps * kept
                    folded = cluster.sum(torch.tensordot(weights, increments, dims=1))
                    kept.copy_(beta ** (everyone * steps) * kept + folded)
            state.steps += everyone * steps

    def run(self, forward: Forward, parameters: Parameters, inputs: Tensor, targets: Tensor,
            *, steps: int | None = None, batch_size: int | None = None,
            generator: torch.Generator | None = None,
            state: InnerAdamState | None = None) -> Adaptation:
        """Train per-task copies of ``parameters`` (T, *shape) on (inputs, targets) (T, N, ...).

        Mini-batches are drawn with ``generator`` (default: torch's global one). Adam starts
        from ``state`` when given (read only), else from zero moments.
        """
        steps = self.steps if steps is None else steps
        batch_size = self.batch_size if batch_size is None else batch_size
        tasks, size = targets.shape[:2]
        order = mini_batch_indices(tasks, size, steps, batch_size, inputs.device, generator)
        parameters = {name: value.detach().clone() for name, value in parameters.items()}
        first, second, taken = self._start_moments(parameters, state)
        beta1, beta2 = self.betas
        history = []
        for step in range(steps):
            chosen = None if order is None else order[step]
            with torch.enable_grad():
                current = {name: value.requires_grad_() for name, value in parameters.items()}
                losses = self.loss(forward(current, select_examples(inputs, chosen)),
                                   select_examples(targets, chosen))
                gradients = task_gradients(losses, current)
            history.append(losses.detach())
            count = taken + step + 1
            with torch.no_grad():
                for name, value in parameters.items():
                    value.requires_grad_(False)
                    gradient = gradients[name]
                    if self.optimizer == "sgd":
                        value.sub_(self.lr * gradient)
                        continue
                    first[name].mul_(beta1).add_(gradient, alpha=1 - beta1)
                    second[name].mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
                    corrected = first[name] / (1 - beta1 ** count)
                    scale = (second[name] / (1 - beta2 ** count)).sqrt_().add_(self.eps)
                    value.sub_(self.lr * corrected / scale)
        return Adaptation({name: value.detach() for name, value in parameters.items()},
                          _stack_losses(history, tasks, inputs),
                          moments={"first": first, "second": second})


class LSTMUpdate:
    """The learned update of Meta-Learner LSTM (Ravi & Larochelle 2017): the learner's parameters
    are the cell state of :class:`metactl.nn.meta_lstm.MetaLSTM`, updated once per mini-batch of
    the support set from the learner's loss and gradient there.

    ``model`` must have ``learner`` (the network being adapted; its parameters are the initial
    cell state) and ``meta_lstm`` (a :class:`~metactl.nn.meta_lstm.MetaLSTM`), as
    :class:`~metactl.nn.meta_lstm.LearnerWithMetaLSTM` does.

    The learner's gradients and losses enter the meta-learner as inputs, detached: the
    meta-gradient flows through the LSTM's updates of the parameters, not through the learner's
    second derivatives (the paper's simplification). The learner's batch norm uses the
    statistics of each mini-batch while adapting and collects running averages per task, reset
    for every task; the query pass then uses batch statistics in training mode and those
    running averages in evaluation mode (as in the authors' code), so evaluation is not
    transductive.

    Args:
        epochs: passes over the support set.
        batch_size: support examples per update (0 or at least the support size: all).
        loss: ``loss(predictions, targets) -> (T,)``; default :func:`task_loss` (cross-entropy
            for integer labels, mean squared error for float targets).
    """

    def __init__(self, epochs: int = 5, batch_size: int = 5, loss: TaskLoss | None = None
                 ) -> None:
        self.epochs, self.batch_size = epochs, batch_size
        self.loss = loss or task_loss

    def steps_for(self, support_size: int) -> int:
        batch = support_size if self.batch_size <= 0 else min(self.batch_size, support_size)
        return self.epochs * math.ceil(support_size / batch)

    def adapt(self, algorithm: Algorithm, model: nn.Module, support: LabelledImages
              ) -> LearnerState:
        adaptation = self.adaptation(algorithm, model, support)
        return LearnerState(adaptation.parameters, adaptation.buffers)

    def adaptation(self, algorithm: Algorithm, model: nn.Module, support: LabelledImages
                   ) -> Adaptation:
        learner, meta_lstm = model.learner, model.meta_lstm
        tasks, size = support.labels.shape
        shapes = {name: value.shape for name, value in learner.named_parameters()}
        # The meta-graph is only worth building when a meta-gradient will be taken.
        build_graph = model.training and torch.is_grad_enabled()
        flat = flatten_parameters(expand_parameters(learner, tasks))
        if not build_graph:
            flat = flat.detach()
        buffers = task_buffers(learner, tasks)
        steps = self.steps_for(size)
        order = mini_batch_indices(tasks, size, steps, self.batch_size, support.images.device)
        state, history = None, []
        for step in range(steps):
            chosen = None if order is None else order[step]
            with torch.enable_grad(), training_mode(learner, True):
                current = flat.detach().requires_grad_()
                learner_state = LearnerState(unflatten_parameters(current, shapes), buffers)
                losses = self.loss(
                    algorithm.logits(model, learner_state, select_examples(support.images,
                                                                           chosen)),
                    select_examples(support.labels, chosen))
                (gradients,) = torch.autograd.grad(losses.sum(), current)
            with torch.set_grad_enabled(build_graph):
                flat, state = meta_lstm(flat, gradients, losses.detach(), state)
            history.append(losses.detach())
        return Adaptation(unflatten_parameters(flat, shapes),
                          _stack_losses(history, tasks, support.images), buffers)
