"""Every fast path computes what the plain path computes: tasks batched into one forward with
per-task batch-norm statistics, the captured step (its CPU twin here, the CUDA graph where a GPU
is present), and the channels-last layout."""

from __future__ import annotations

import copy

import pytest
import torch
from testsupport import float64_task_batch

from metactl.engine.config import resolve_config
from metactl.engine.device import placement_for
from metactl.engine.graphs import CapturedGradient, PlainGradient
from metactl.nn.backbones import Conv4
from metactl.nn.functional import forward_per_task
from metactl.plugins import get_registry

CAPTURED = ("prototypical", "matching", "relation", "maml", "fomaml")


def test_batched_tasks_have_per_task_batch_norm_statistics_like_a_loop():
    torch.manual_seed(0)
    batched = Conv4(hidden=8).double().train()
    looped = copy.deepcopy(batched)
    images = torch.rand(3, 6, 1, 28, 28, dtype=torch.float64)
    outputs = forward_per_task(batched, images)
    expected = torch.stack([looped(task) for task in images])
    torch.testing.assert_close(outputs, expected)
    gradients = torch.autograd.grad(outputs.pow(2).sum(), list(batched.parameters()))
    reference = torch.autograd.grad(expected.pow(2).sum(), list(looped.parameters()))
    for mine, theirs in zip(gradients, reference, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_batched_tasks_update_running_statistics_with_the_mean_of_the_tasks():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).double()
    images = torch.rand(3, 5, 1, 8, 8, dtype=torch.float64)
    layer = network[1]
    before = layer.running_mean.clone()
    forward_per_task(network, images)
    with torch.no_grad():
        task_means = torch.stack([network[0](task).mean((0, 2, 3)) for task in images])
    torch.testing.assert_close(layer.running_mean, 0.9 * before + 0.1 * task_means.mean(0))
    assert int(layer.num_batches_tracked) == 1


def algorithm_and_model(name: str, device: str = "cpu", **settings):
    algorithm_class = get_registry().get(name)
    config = resolve_config(name, algorithm_class.defaults, {},
                            {"way": 3, "shot": 1, "query": 2, "train_way": 3, "train_query": 2,
                             "meta_batch": 2, "device": device, **settings}, {})
    algorithm = algorithm_class(config)
    from metactl.algorithm import ModelSpec

    torch.manual_seed(0)
    model = algorithm.build_model(ModelSpec(1, 28, 28, way=3)).to(device)
    return algorithm, model, placement_for(config, algorithm.device)


def gradients_after(step, model, batches) -> list[tuple[float, list[torch.Tensor]]]:
    results = []
    for batch in batches:
        result = step(batch)
        results.append((float(result.loss.detach()), [p.grad.clone() for p in model.parameters()]))
    return results


@pytest.mark.parametrize("name", CAPTURED)
def test_captured_step_twin_computes_the_plain_loss_and_gradients(name):
    """Two fixed-shape batches through the static-buffer step (the second one copied into the
    buffers of the first) give the plain step's loss and meta-gradient, in float64."""
    algorithm, model, placement = algorithm_and_model(name)
    model = model.double().train()
    twin_model = copy.deepcopy(model)
    batches = [float64_task_batch(2, 3, 1, 2, side=28, seed=seed) for seed in (1, 2)]
    plain = gradients_after(PlainGradient(algorithm, model, torch.optim.SGD(
        model.parameters(), lr=0.1), placement), model, batches)
    twin = gradients_after(CapturedGradient(algorithm, twin_model, torch.optim.SGD(
        twin_model.parameters(), lr=0.1), placement), twin_model, batches)
    for (loss, gradients), (twin_loss, twin_gradients) in zip(plain, twin, strict=True):
        assert loss == pytest.approx(twin_loss, rel=1e-12)
        for mine, theirs in zip(gradients, twin_gradients, strict=True):
            torch.testing.assert_close(mine, theirs)
    assert plain[0][0] != plain[1][0]  # the second batch really was a new one


def test_captured_steps_report_accuracy_without_waiting_for_the_device():
    for name in CAPTURED:
        algorithm, model, _ = algorithm_and_model(name)
        result = algorithm.loss(model.double().train(), float64_task_batch(2, 3, 1, 2, side=28))
        assert isinstance(result.accuracy, torch.Tensor), name


@pytest.mark.parametrize("name", ["prototypical", "matching", "relation", "siamese"])
def test_channels_last_computes_the_plain_loss_and_gradients(name):
    algorithm, model, _ = algorithm_and_model(name, channels_last=True)
    model.train()
    other = copy.deepcopy(model).to(memory_format=torch.channels_last)
    batch = float64_task_batch(2, 3, 1, 2, side=28)
    batch = type(batch)(*(value.float() if value.is_floating_point() else value
                          for value in (batch.support_images, batch.support_labels,
                                        batch.query_images, batch.query_labels, batch.classes)),
                        batch.way, batch.shot, batch.query)
    torch.manual_seed(1)
    plain = algorithm.loss(model, batch).loss
    torch.manual_seed(1)
    fast = algorithm.loss(other, batch).loss
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(torch.autograd.grad(plain, list(model.parameters())),
                            torch.autograd.grad(fast, list(other.parameters())), strict=True):
        torch.testing.assert_close(theirs, mine, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", CAPTURED)
def test_cuda_graph_replays_the_plain_step(name):
    algorithm, model, placement = algorithm_and_model(name, device="cuda")
    assert placement.cuda_graphs
    model.train()
    graph_model = copy.deepcopy(model)
    batches = [float64_task_batch(2, 3, 1, 2, side=28, seed=seed).to("cuda") for seed in (1, 2)]
    batches = [type(b)(b.support_images.float(), b.support_labels, b.query_images.float(),
                       b.query_labels, b.classes, b.way, b.shot, b.query) for b in batches]
    plain = gradients_after(PlainGradient(algorithm, model, torch.optim.SGD(
        model.parameters(), lr=0.1), placement), model, batches)
    captured = CapturedGradient(algorithm, graph_model, torch.optim.SGD(
        graph_model.parameters(), lr=0.1), placement)
    replayed = gradients_after(captured, graph_model, batches)
    assert captured.graph is not None
    for (loss, gradients), (graph_loss, graph_gradients) in zip(plain, replayed, strict=True):
        assert loss == pytest.approx(graph_loss, rel=1e-4)
        for mine, theirs in zip(gradients, graph_gradients, strict=True):
            torch.testing.assert_close(theirs, mine, rtol=1e-3, atol=1e-5)
