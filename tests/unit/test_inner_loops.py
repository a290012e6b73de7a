"""The inner-loop strategies of metactl.nn on cases with a known answer."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from testsupport import train_plainly
from torch import nn
from torch.func import functional_call

from metactl.algorithm import Algorithm, LabelledImages
from metactl.nn.functional import (
    expand_parameters,
    flatten_parameters,
    mini_batch_indices,
    preprocess_gradients,
    task_forward,
    task_mse,
    unflatten_parameters,
)
from metactl.nn.inner_loops import GradientSteps, ReptileSteps
from metactl.nn.learners import ConvLearner


def regression_tasks(tasks=3, support=6, query=7, features=4, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    true_weights = draw(tasks, features, 1)
    support_x, query_x = draw(tasks, support, features), draw(tasks, query, features)
    return support_x, support_x @ true_weights, query_x, query_x @ true_weights + 0.1


def linear_maml_gradients(model, support_x, support_y, query_x, query_y, lr, first_order):
    """Meta-gradient of the mean query MSE after one inner step, through GradientSteps."""
    model.zero_grad()
    loop = GradientSteps(steps=1, lr=lr, first_order=first_order, loss=task_mse)

    def forward(parameters, inputs):
        return task_forward(model, parameters, inputs)

    adapted = loop.run(forward, expand_parameters(model, support_x.shape[0]), support_x,
                       support_y).parameters
    task_mse(forward(adapted, query_x), query_y).mean().backward()
    return model.weight.grad.view(-1).clone()


def test_one_step_meta_gradient_matches_the_closed_form():
    """f(x) = w.x with squared error: phi = w - a H_s w + a b_s with H = (2/n) X^T X, and the
    meta-gradient of task t is (I - a H_s) grad L_q(phi)."""
    support_x, support_y, query_x, query_y = regression_tasks()
    model = nn.Linear(4, 1, bias=False).double()
    lr = 0.05
    w = model.weight.detach().view(4, 1)
    expected_second, expected_first = torch.zeros(4, 1, dtype=torch.float64), 0
    for x_s, y_s, x_q, y_q in zip(support_x, support_y, query_x, query_y, strict=True):
        hessian = 2 / x_s.shape[0] * x_s.T @ x_s
        phi = w - lr * 2 / x_s.shape[0] * x_s.T @ (x_s @ w - y_s)
        query_gradient = 2 / x_q.shape[0] * x_q.T @ (x_q @ phi - y_q)
        expected_second = expected_second + (torch.eye(4, dtype=torch.float64)
                                              - lr * hessian) @ query_gradient / 3
        expected_first = expected_first + query_gradient / 3
    second = linear_maml_gradients(model, support_x, support_y, query_x, query_y, lr, False)
    first = linear_maml_gradients(model, support_x, support_y, query_x, query_y, lr, True)
    assert torch.allclose(second, expected_second.view(-1), rtol=1e-10, atol=1e-12)
    assert torch.allclose(first, expected_first.view(-1), rtol=1e-10, atol=1e-12)


def test_first_order_drops_exactly_the_hessian_term():
    support_x, support_y, query_x, query_y = regression_tasks(seed=1)
    model = nn.Linear(4, 1, bias=False).double()
    lr = 0.1
    second = linear_maml_gradients(model, support_x, support_y, query_x, query_y, lr, False)
    first = linear_maml_gradients(model, support_x, support_y, query_x, query_y, lr, True)
    w = model.weight.detach().view(4, 1)
    hessian_term = torch.zeros(4, 1, dtype=torch.float64)
    for x_s, y_s, x_q, y_q in zip(support_x, support_y, query_x, query_y, strict=True):
        phi = w - lr * 2 / x_s.shape[0] * x_s.T @ (x_s @ w - y_s)
        query_gradient = 2 / x_q.shape[0] * x_q.T @ (x_q @ phi - y_q)
        hessian_term += lr * (2 / x_s.shape[0] * x_s.T @ x_s) @ query_gradient / 3
    assert not torch.allclose(first, second)
    assert torch.allclose(first - second, hessian_term.view(-1), rtol=1e-10, atol=1e-12)


class TinyClassifier(Algorithm):
    """A third-party style algorithm that reuses GradientSteps for its own model."""

    name, family = "tiny", "optimization"
    adapts_with_gradients = True

    def __init__(self, inner_loop, batched=True):
        super().__init__({})
        self.inner_loop, self.batched = inner_loop, batched

    def logits(self, model, state, query_images):
        return task_forward(model, state, query_images, batched=self.batched)


def classification_tasks(tasks=3, way=3, shot=2, query=2, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(way).repeat_interleave(shot).repeat(tasks, 1)
    query_labels = torch.arange(way).repeat_interleave(query).repeat(tasks, 1)
    images = torch.rand(tasks, way * shot, 1, 12, 12, generator=generator, dtype=dtype)
    query_images = torch.rand(tasks, way * query, 1, 12, 12, generator=generator, dtype=dtype)
    return LabelledImages(images, labels, way), query_images, query_labels


def small_learner(way=3, seed=0):
    torch.manual_seed(seed)
    return ConvLearner(1, way, (12, 12), hidden=4, blocks=2, downsample="stride").double()


class SavedTensorCounter:
    """Bytes of the tensors autograd keeps alive for backward, through saved-tensor hooks."""

    def __init__(self):
        self.holders = weakref.WeakSet()

    def pack(self, tensor):
        holder = _Holder(tensor)
        self.holders.add(holder)
        return holder

    @staticmethod
    def unpack(holder):
        return holder.tensor

    def live_bytes(self):
        gc.collect()
        return sum(h.tensor.numel() * h.tensor.element_size() for h in list(self.holders))


class _Holder:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def graph_bytes(first_order, steps):
    model = small_learner()
    support, query_images, query_labels = classification_tasks()
    algorithm = TinyClassifier(GradientSteps(steps=steps, lr=0.1, first_order=first_order))
    counter = SavedTensorCounter()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        state = algorithm.adapt(model.train(), support)
        loss = nn.functional.cross_entropy(
            algorithm.logits(model, state, query_images).flatten(0, 1), query_labels.flatten())
    kept = counter.live_bytes()
    loss.backward()
    return kept


def test_first_order_memory_does_not_grow_with_inner_steps():
    assert graph_bytes(first_order=True, steps=1) == graph_bytes(first_order=True, steps=5)
    assert graph_bytes(first_order=False, steps=5) > 2 * graph_bytes(first_order=False, steps=1)


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_parameters():
    model = small_learner()
    support, query_images, query_labels = classification_tasks()
    algorithm = TinyClassifier(GradientSteps(steps=3, lr=0.2, first_order=True))
    state = algorithm.adapt(model.train(), support)
    nn.functional.cross_entropy(algorithm.logits(model, state, query_images).flatten(0, 1),
                                query_labels.flatten()).backward()
    for name, parameter in model.named_parameters():
        adapted = state[name].detach().requires_grad_()
        values = {**{k: v.detach() for k, v in state.items()}, name: adapted}
        scores = task_forward(model, values, query_images)
        loss = nn.functional.cross_entropy(scores.flatten(0, 1), query_labels.flatten())
        (expected,) = torch.autograd.grad(loss, adapted)
        assert torch.allclose(parameter.grad, expected.sum(0), atol=1e-12), name


def test_batched_and_looped_forwards_agree():
    model = small_learner()
    parameters = {k: v + 0.01 * torch.randn_like(v)
                  for k, v in expand_parameters(model, 3).items()}
    images = torch.rand(3, 5, 1, 12, 12, dtype=torch.float64)
    batched = task_forward(model, parameters, images, batched=True)
    looped = task_forward(model, parameters, images, batched=False)
    assert batched.shape == (3, 5, 3)
    assert torch.allclose(batched, looped, atol=1e-12)
    one = functional_call(model, {k: v[1] for k, v in parameters.items()}, (images[1],))
    assert torch.allclose(batched[1], one, atol=1e-12)


def test_gradient_steps_can_adapt_only_some_parameters():
    model = small_learner()
    support, _, _ = classification_tasks()
    algorithm = TinyClassifier(GradientSteps(steps=2, lr=0.3,
                                             select=lambda name: name.startswith("classifier")))
    state = algorithm.adapt(model.train(), support)
    assert set(state) == {"classifier.weight", "classifier.bias"}
    assert not torch.allclose(state["classifier.weight"][0], model.classifier.weight)


def test_evaluation_mode_takes_the_test_steps_without_a_second_order_graph():
    model = small_learner()
    support, _, _ = classification_tasks()
    loop = GradientSteps(steps=1, lr=0.1, test_steps=4)
    adaptation = loop.adaptation(TinyClassifier(loop), model.eval(), support)
    assert adaptation.losses.shape == (4, 3)
    assert adaptation.losses[-1].mean() < adaptation.losses[0].mean()


def reptile_reference(model, support, steps, lr, optimizer):
    """Train a copy of the model per task with torch.optim, full batch."""
    results = []
    for task in range(support.tasks):
        copy = small_learner()
        copy.load_state_dict(model.state_dict())
        copy.train()
        train_plainly(copy, support.images[task], support.labels[task], steps, lr, optimizer)
        results.append({k: v.detach().clone() for k, v in copy.named_parameters()})
    return {k: torch.stack([r[k] for r in results]) for k in results[0]}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_reptile_steps_train_each_task_like_torch_optim(optimizer):
    model = small_learner()
    support, _, _ = classification_tasks()
    loop = ReptileSteps(steps=4, lr=0.05, optimizer=optimizer, batch_size=0)
    adapted = loop.adapt(TinyClassifier(loop), model.train(), support)
    expected = reptile_reference(model, support, 4, 0.05, optimizer)
    for name in expected:
        assert torch.allclose(adapted[name], expected[name], atol=1e-10), name
        assert not adapted[name].requires_grad


def test_mini_batches_visit_every_example_once_per_pass():
    order = mini_batch_indices(tasks=2, size=6, steps=6, batch_size=4)
    assert order.shape == (6, 2, 4)
    per_task = order.transpose(0, 1).reshape(2, 4, 6)  # 24 draws = 4 passes of 6
    for task in per_task:
        for one_pass in task:
            assert sorted(one_pass.tolist()) == list(range(6))
    assert mini_batch_indices(2, 6, 3, 6) is None


def test_gradient_preprocessing_keeps_magnitude_and_sign():
    """Above e^-10: (log|x| / 10, sign x); below: (-1, e^10 x)."""
    values = torch.tensor([1.0, -math.e ** 2, 1e-3, 1e-6, -1e-6, 0.0], dtype=torch.float64)
    processed = preprocess_gradients(values, power=10.0)
    expected = torch.tensor([[0.0, 1.0], [0.2, -1.0], [math.log(1e-3) / 10, 1.0],
                             [-1.0, 1e-6 * math.exp(10)], [-1.0, -1e-6 * math.exp(10)],
                             [-1.0, 0.0]], dtype=torch.float64)
    assert processed.shape == (6, 2)
    assert torch.allclose(processed, expected, rtol=1e-12, atol=0)


def test_flattening_round_trips():
    model = small_learner()
    parameters = expand_parameters(model, 2)
    flat = flatten_parameters(parameters)
    assert flat.shape == (2, sum(p.numel() for p in model.parameters()))
    back = unflatten_parameters(flat, {k: v.shape for k, v in model.named_parameters()})
    for name, value in parameters.items():
        assert torch.equal(back[name], value)
