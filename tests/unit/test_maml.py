"""MAML and first-order MAML: the meta-gradient, batched over tasks, against a per-task loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metactl.algorithm import LabelledImages, ModelSpec
from metactl.data.episodes import TaskBatch
from metactl.engine.config import resolve_config
from metactl_plugins.maml import MAML, FirstOrderMAML


def make_algorithm(cls=MAML, **overrides):
    values = {"hidden": 6, **overrides}
    return cls(resolve_config(cls.name, cls.defaults, {}, values, {}))


def task_batch(tasks=4, way=3, shot=2, query=3, size=14, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    support = torch.rand(tasks, way * shot, 1, size, size, generator=generator, dtype=dtype)
    queries = torch.rand(tasks, way * query, 1, size, size, generator=generator, dtype=dtype)
    return TaskBatch(support, torch.arange(way).repeat_interleave(shot).repeat(tasks, 1),
                     queries, torch.arange(way).repeat_interleave(query).repeat(tasks, 1),
                     torch.zeros(tasks, way, dtype=torch.long), way, shot, query)


def per_task_loop_gradients(model, batch, steps, lr, first_order):
    """Second-order MAML written plainly: one task at a time, no vmap, no shared code."""
    model.zero_grad()
    parameters = dict(model.named_parameters())
    for task in range(batch.tasks):
        adapted = dict(parameters)
        for _ in range(steps):
            scores = functional_call(model, adapted, (batch.support_images[task],))
            loss = nn.functional.cross_entropy(scores, batch.support_labels[task])
            gradients = torch.autograd.grad(loss, list(adapted.values()),
                                            create_graph=not first_order)
            adapted = {name: value - lr * gradient for (name, value), gradient
                       in zip(adapted.items(), gradients, strict=True)}
        scores = functional_call(model, adapted, (batch.query_images[task],))
        (nn.functional.cross_entropy(scores, batch.query_labels[task]) / batch.tasks).backward()
    return {name: value.grad.clone() for name, value in parameters.items()}


@pytest.mark.parametrize("cls", [MAML, FirstOrderMAML])
@pytest.mark.parametrize("batch_tasks", [True, False])
def test_batched_meta_gradient_equals_a_per_task_loop_in_float64(cls, batch_tasks):
    """Batch norm included: the trap of torch.func.grad inside vmap would show here."""
    algorithm = make_algorithm(cls, inner_steps=2, inner_lr=0.3, batch_tasks=batch_tasks)
    torch.manual_seed(0)
    model = algorithm.build_model(ModelSpec(1, 14, 14, way=3)).double().train()
    batch = task_batch()
    algorithm.meta_gradient(model, batch)
    batched = {name: value.grad.clone() for name, value in model.named_parameters()}
    expected = per_task_loop_gradients(model, batch, steps=2, lr=0.3,
                                       first_order=cls.first_order)
    scale = max(float(g.abs().max()) for g in expected.values())
    for name, gradient in expected.items():
        assert torch.allclose(batched[name], gradient, rtol=1e-9, atol=1e-12 * scale), name


def test_second_order_terms_change_the_meta_gradient():
    torch.manual_seed(0)
    batch = task_batch()
    gradients = []
    for cls in (MAML, FirstOrderMAML):
        algorithm = make_algorithm(cls, inner_steps=1, inner_lr=0.4)
        torch.manual_seed(0)
        model = algorithm.build_model(ModelSpec(1, 14, 14, way=3)).double().train()
        algorithm.meta_gradient(model, batch)
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert not torch.allclose(gradients[0], gradients[1], rtol=1e-3)


def test_evaluation_adapts_with_the_test_steps():
    algorithm = make_algorithm(inner_steps=1, test_inner_steps=3)
    model = algorithm.build_model(ModelSpec(1, 14, 14, way=3)).double()
    batch = task_batch()
    support = LabelledImages(batch.support_images, batch.support_labels, 3)
    assert algorithm.inner_loop.adaptation(algorithm, model.train(), support).losses.shape[0] == 1
    assert algorithm.inner_loop.adaptation(algorithm, model.eval(), support).losses.shape[0] == 3


def test_predict_gives_probabilities_for_fewer_classes_than_trained():
    algorithm = make_algorithm()
    model = algorithm.build_model(ModelSpec(1, 14, 14, way=5)).eval()
    batch = task_batch(dtype=torch.float32)
    probabilities = algorithm.predict(model, LabelledImages(batch.support_images,
                                                            batch.support_labels, 3),
                                      batch.query_images)
    assert probabilities.shape == (4, 9, 3)
    assert torch.allclose(probabilities.sum(-1), torch.ones(4, 9))


def test_batch_norm_keeps_no_running_statistics():
    model = make_algorithm().build_model(ModelSpec(1, 28, 28, way=5))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 4 and all(not m.track_running_stats for m in norms)
    assert not list(model.buffers())


def test_omniglot_defaults_follow_the_paper():
    five = resolve_config("maml", MAML.defaults, {}, {"way": 5, "shot": 1}, {})
    assert (five["inner_steps"], five["test_inner_steps"], five["inner_lr"]) == (1, 3, 0.4)
    assert (five["meta_batch"], five["lr"], five["optimizer"]) == (32, 1e-3, "adam")
    assert five["episodes"] // five["meta_batch"] == 60_000
    assert (five["hidden"], five["downsample"], five["train_query"]) == (64, "stride", 1)
    twenty = resolve_config("maml", MAML.defaults, {}, {"way": 20, "shot": 1}, {})
    assert (twenty["inner_steps"], twenty["test_inner_steps"], twenty["inner_lr"]) == (5, 5, 0.1)
    assert twenty["meta_batch"] == 16 and twenty["episodes"] // 16 == 60_000


def test_fomaml_is_maml_without_second_order_terms():
    assert FirstOrderMAML.first_order and not MAML.first_order
    assert make_algorithm(FirstOrderMAML).inner_loop.first_order
    assert FirstOrderMAML.defaults is MAML.defaults


def test_regression_tasks_use_the_papers_regressor_and_squared_error():
    algorithm = MAML(resolve_config("maml", MAML.defaults, {}, {"dataset": "sinusoid"}, {}))
    assert "regression" in MAML.tasks
    model = algorithm.build_model(ModelSpec(1, 1, 1, way=1, task="regression")).train()
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [40, 40, 1]
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 15, 1, generator=generator) * 10 - 5
    y = 2.0 * torch.sin(x - 0.5)
    batch = TaskBatch(x[:, :10], y[:, :10], x[:, 10:], y[:, 10:], torch.zeros(3, 2), 1, 10, 5)
    result = algorithm.meta_gradient(model, batch)
    assert result.accuracy is None and torch.isfinite(result.loss)
    model.eval()
    with torch.enable_grad():
        predictions = algorithm.predict(model, LabelledImages(x[:, :10], y[:, :10], 1), x[:, 10:])
    assert predictions.shape == (3, 5, 1)
    assert algorithm.inner_loop.test_steps == 10 and algorithm.inner_loop.lr == 0.01
