"""Reptile: the outer update is the interpolation towards the task-trained weights."""

from __future__ import annotations

import pytest
import torch
from testsupport import float64_task_batch, train_plainly

from metactl.algorithm import ModelSpec
from metactl.engine.config import resolve_config
from metactl.errors import UsageError
from metactl_plugins.reptile import Reptile

SMALL = {"hidden": 5, "inner_batch_size": 0, "inner_steps": 3, "inner_lr": 0.02,
         "meta_batch": 3, "episodes": 30}


def make_algorithm(**overrides):
    return Reptile(resolve_config("reptile", Reptile.defaults, {}, {**SMALL, **overrides}, {}))


def task_batch(tasks=3, way=3, shot=2, query=0, seed=0):
    return float64_task_batch(tasks, way, shot, query, side=14, seed=seed)


def build(algorithm):
    torch.manual_seed(0)
    return algorithm.build_model(ModelSpec(1, 14, 14, way=3)).double().train()


def train_copy(model, images, labels, steps, lr, optimizer):
    """One task trained the ordinary way, with torch.optim on a copy of the model."""
    copy = build(make_algorithm())
    copy.load_state_dict(model.state_dict())
    return train_plainly(copy, images, labels, steps, lr, optimizer)


def outer_step(algorithm, model, batch):
    optimizer = torch.optim.SGD(model.parameters(), lr=float(algorithm.hparams["lr"]))
    optimizer.zero_grad()
    result = algorithm.meta_gradient(model, batch)
    optimizer.step()
    return result


@pytest.mark.parametrize("inner_optimizer", ["adam", "sgd"])
def test_batched_update_interpolates_towards_the_mean_of_the_adapted_weights(inner_optimizer):
    algorithm = make_algorithm(inner_optimizer=inner_optimizer)
    algorithm.progress = 0.25  # epsilon = 1.0 * (1 - 0.25) + 0.25 * 0.0
    model = build(algorithm)
    batch = task_batch()
    initial = {name: value.detach().clone() for name, value in model.named_parameters()}
    adapted = [dict(train_copy(model, batch.support_images[t], batch.support_labels[t], 3,
                               0.02, inner_optimizer).named_parameters())
               for t in range(batch.tasks)]
    outer_step(algorithm, model, batch)
    for name, value in model.named_parameters():
        mean = torch.stack([a[name].detach() for a in adapted]).mean(0)
        expected = initial[name] + 0.75 * (mean - initial[name])
        assert torch.allclose(value, expected, atol=1e-10), name


def test_serial_update_applies_the_tasks_in_turn():
    algorithm = make_algorithm(reptile_batched=False, inner_optimizer="sgd", lr=0.5)
    algorithm.progress = 0.0
    model = build(algorithm)
    batch = task_batch()
    expected = build(algorithm)
    expected.load_state_dict(model.state_dict())
    for task in range(batch.tasks):
        trained = train_copy(expected, batch.support_images[task], batch.support_labels[task],
                             3, 0.02, "sgd")
        with torch.no_grad():
            for value, target in zip(expected.parameters(), trained.parameters(), strict=True):
                value.add_(0.5 * (target - value))
    outer_step(algorithm, model, batch)
    for (name, value), target in zip(model.named_parameters(), expected.parameters(),
                                     strict=True):
        assert torch.allclose(value, target, atol=1e-10), name


def test_outer_step_size_is_annealed_linearly_to_lr_final():
    algorithm = make_algorithm(lr=1.0, lr_final=0.2)
    factors = []
    for fraction in (0.0, 0.5, 1.0):
        algorithm.progress = fraction
        factors.append(algorithm.annealing_factor())
    assert factors == pytest.approx([1.0, 0.6, 0.2])


def test_without_engine_progress_the_steps_are_counted():
    algorithm = make_algorithm(episodes=12, meta_batch=3)  # 4 steps
    model = build(algorithm)
    sizes = [outer_step(algorithm, model, task_batch()).extra["step_size"] for _ in range(4)]
    assert sizes == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_query_accuracy_is_reported_when_the_batch_has_queries():
    algorithm = make_algorithm()
    result = outer_step(algorithm, build(algorithm), task_batch(query=2))
    assert result.accuracy is not None and 0 <= result.accuracy <= 1
    assert torch.isfinite(result.loss)


def test_serial_version_refuses_an_outer_optimizer_it_cannot_drive():
    with pytest.raises(UsageError, match="plain SGD"):
        make_algorithm(reptile_batched=False, optimizer="adam")


def test_omniglot_defaults_follow_the_paper():
    five = resolve_config("reptile", Reptile.defaults, {}, {"way": 5, "shot": 1}, {})
    assert (five["inner_optimizer"], five["inner_lr"], five["inner_steps"]) == ("adam", 1e-3, 5)
    assert (five["inner_batch_size"], five["train_shot"], five["meta_batch"]) == (10, 10, 5)
    assert (five["test_inner_steps"], five["test_inner_batch_size"]) == (50, 5)
    assert (five["optimizer"], five["lr"], five["lr_final"], five["momentum"]) == (
        "sgd", 1.0, 0.0, 0.0)
    assert five["episodes"] // five["meta_batch"] == 100_000
    twenty = resolve_config("reptile", Reptile.defaults, {}, {"way": 20, "shot": 1}, {})
    assert (twenty["inner_steps"], twenty["inner_batch_size"], twenty["inner_lr"]) == (
        10, 20, 5e-4)
    assert twenty["episodes"] // twenty["meta_batch"] == 200_000
