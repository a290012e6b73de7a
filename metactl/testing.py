"""Conformance checks every algorithm plugin should pass; a pytest plugin for plugin authors.

Installed with metactl as the pytest plugin ``metactl`` (active in any pytest run of an
environment where metactl is installed), it gives tests a fixture::

    def test_my_method_conforms(metactl_conformance):
        metactl_conformance("my-method")          # a registered name, or the class itself

which builds the model, takes one meta-training step on a tiny random batch (finite loss,
gradients reach the parameters), computes the training statistics and predicts (probabilities
that sum to one), in evaluation mode as the engine does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

TINY = {"way": 3, "shot": 2, "query": 2, "tasks": 2, "classes": 10, "side": 28}


def tiny_batch(way: int = 3, shot: int = 2, query: int = 2, tasks: int = 2,
               num_classes: int = 10, side: int = 28, seed: int = 0):
    """A random :class:`~metactl.data.episodes.TaskBatch` of 1-channel ``side``-px images."""
    import torch

    from metactl.data.episodes import TaskBatch

    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(way)
    classes = torch.stack([torch.randperm(num_classes, generator=generator)[:way]
                           for _ in range(tasks)])
    return TaskBatch(
        support_images=torch.rand(tasks, way * shot, 1, side, side, generator=generator),
        support_labels=labels.repeat_interleave(shot).expand(tasks, -1).clone(),
        query_images=torch.rand(tasks, way * query, 1, side, side, generator=generator),
        query_labels=labels.repeat_interleave(query).expand(tasks, -1).clone(),
        classes=classes, way=way, shot=shot, query=query)


def check_algorithm(algorithm: str | type, overrides: dict[str, Any] | None = None) -> None:
    """Build ``algorithm`` (a registered name or an Algorithm subclass), take one meta-step on
    a tiny batch and predict; raise AssertionError naming the first broken promise."""
    import torch

    from metactl.algorithm import LabelledImages, ModelSpec, support_of
    from metactl.engine.config import resolve_config
    from metactl.plugins import _check_algorithm, get_registry

    if isinstance(algorithm, str):
        algorithm_class = get_registry().get(algorithm)
    else:
        _check_algorithm(algorithm)
        algorithm_class = algorithm
    name = algorithm_class.name
    values = {"way": TINY["way"], "shot": TINY["shot"], "query": TINY["query"],
              "train_way": TINY["way"], "train_query": TINY["query"],
              "meta_batch": TINY["tasks"], **(overrides or {})}
    config = resolve_config(name, algorithm_class.defaults, {}, values, {})
    algorithm = algorithm_class(config)
    torch.manual_seed(0)
    spec = ModelSpec(1, TINY["side"], TINY["side"], TINY["way"], TINY["classes"])
    model = algorithm.build_model(spec)
    assert isinstance(model, torch.nn.Module), f"{name}: build_model must return an nn.Module"
    batch = tiny_batch(TINY["way"], TINY["shot"], TINY["query"], TINY["tasks"], TINY["classes"])
    model.train()
    result = algorithm.meta_gradient(model, batch)
    assert math.isfinite(float(result.loss.detach())), f"{name}: the meta-objective is not finite"
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert gradients, f"{name}: meta_gradient left no gradient in the parameters"
    assert all(bool(torch.isfinite(g).all()) for g in gradients), f"{name}: non-finite gradient"
    assert any(bool(g.abs().sum() > 0) for g in gradients), f"{name}: all gradients are zero"
    model.eval()
    with torch.no_grad():
        images = batch.support_images[:1]
        statistics = algorithm.training_statistics(
            model, iter([LabelledImages(images, batch.classes[:1].repeat_interleave(
                TINY["shot"], dim=1), TINY["classes"])]))
    assert isinstance(statistics, dict), f"{name}: training_statistics must return a dict"
    algorithm.statistics = statistics
    with algorithm.gradient_mode():
        probabilities = algorithm.predict(model, support_of(batch), batch.query_images)
    expected = (TINY["tasks"], TINY["way"] * TINY["query"], TINY["way"])
    assert tuple(probabilities.shape) == expected, (
        f"{name}: predict returned {tuple(probabilities.shape)}, expected {expected}")
    sums = probabilities.detach().sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-4), (
        f"{name}: predicted probabilities do not sum to one")


@pytest.fixture
def metactl_conformance() -> Callable[..., None]:
    """``metactl_conformance(name_or_class, overrides=None)`` runs :func:`check_algorithm`."""
    return check_algorithm
