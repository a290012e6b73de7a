"""The rules of data-parallel training, checked in one process: which tasks each rank takes,
why averaging the ranks' ``.grad`` is the right reduction for every kind of update, and the
batch norm over all ranks (in a one-process group)."""

from __future__ import annotations

import pytest
import torch
from testsupport import float64_task_batch

from metactl.algorithm import ModelSpec
from metactl.data.episodes import EpisodeSampler, SplitData
from metactl.engine.config import resolve_config
from metactl.engine.distributed import (
    Cluster,
    batch_norm_across_ranks,
    collective_timeout,
    tasks_of,
)
from metactl.engine.launch import ProcessPlace, arguments_without_nproc, error_label
from metactl.errors import UsageError
from metactl.plugins import get_registry


def rank(number: int, world_size: int) -> Cluster:
    return Cluster(ProcessPlace(number, world_size, number, world_size))


def tiny_split(classes: int = 12, per_class: int = 6, side: int = 4) -> SplitData:
    images = torch.randint(0, 256, (classes * per_class, side, side), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    offsets = torch.arange(0, classes * per_class + 1, per_class)
    return SplitData(images, offsets, tuple(f"c{index}" for index in range(classes)))


def test_each_rank_takes_its_share_of_the_single_process_batch():
    split = tiny_split()
    whole = EpisodeSampler(split, 3, 1, 2, seed=7)
    expected = [whole.sample(4) for _ in range(2)]
    for number in range(2):
        sampler = EpisodeSampler(split, 3, 1, 2, seed=7)
        for batch in expected:
            share = rank(number, 2).sample(sampler, 4)
            rows = slice(2 * number, 2 * number + 2)
            assert torch.equal(share.support_images, batch.support_images[rows])
            assert torch.equal(share.query_labels, batch.query_labels[rows])
            assert torch.equal(share.classes, batch.classes[rows])


def test_a_meta_batch_that_does_not_divide_is_refused():
    with pytest.raises(UsageError, match="a meta-batch of 6 tasks does not divide among 4 "
                                         "processes") as caught:
        rank(0, 4).check_meta_batch(6)
    assert "--meta-batch 8" in caught.value.hint
    rank(3, 4).check_meta_batch(8)


def test_each_rank_draws_other_random_numbers_reproducibly():
    draws = {}
    for number in range(2):
        for attempt in range(2):
            rank(number, 2).seed_step(seed=5, step=3)
            draws[number, attempt] = torch.rand(3)
    assert torch.equal(draws[0, 0], draws[0, 1]) and torch.equal(draws[1, 0], draws[1, 1])
    assert not torch.equal(draws[0, 0], draws[1, 0])


# Small models, float64. Reptile, Meta-LSTM and MANN draw mini-batch and presentation orders
# from torch's global generator, one row per task, so the two halves drawn one after the other
# see the orders of the whole batch.
UPDATES = {
    "maml": {"hidden": 4, "inner_steps": 2},
    # Reptile's update is an interpolation, theta - mean_i phi_i: linear in the tasks' phi_i.
    "reptile": {"hidden": 4, "inner_steps": 3, "inner_batch_size": 3, "train_shot": 2},
    # Meta-LSTM: the LSTM's unrolled updates of each task's learner stay on its rank.
    "meta-lstm": {"hidden": 4, "downsample": "stride", "lstm_hidden": 4, "inner_epochs": 2,
                  "inner_batch_size": 3},
    # MANN: each task's memory is written and read on its rank, and wiped after it.
    "mann": {"controller_size": 8, "memory_slots": 6, "memory_width": 4, "read_heads": 2,
             "train_query": 1},
}


def meta_gradients(name: str, settings: dict, shares: list[slice], side: int = 8
                   ) -> list[dict[str, torch.Tensor]]:
    """The ``.grad`` that the algorithm's meta_gradient leaves for each share of one batch of
    4 tasks, computed one share after the other from the same generator state."""
    algorithm_class = get_registry().get(name)
    config = resolve_config(name, algorithm_class.defaults, {},
                            {"way": 3, "shot": 2, "query": 2, **settings}, {})
    algorithm = algorithm_class(config)
    algorithm.progress = 0.0
    torch.manual_seed(0)
    model = algorithm.build_model(ModelSpec(1, side, side, 3, num_train_classes=3)).double().train()
    batch = float64_task_batch(4, 3, config["train_shot"], config["train_query"], side)
    start = {name: value.clone() for name, value in model.state_dict().items()}
    torch.manual_seed(1)
    results = []
    for share in shares:
        model.load_state_dict(start)  # every rank starts from the same model and kept state
        model.zero_grad(set_to_none=True)
        algorithm.meta_gradient(model, tasks_of(batch, share))
        results.append({name: parameter.grad.clone()
                        for name, parameter in model.named_parameters()
                        if parameter.grad is not None})
    return results


@pytest.mark.parametrize("name", sorted(UPDATES))
def test_the_mean_of_the_ranks_updates_is_the_whole_batchs_update(name):
    (whole,) = meta_gradients(name, UPDATES[name], [slice(0, 4)])
    first, second = meta_gradients(name, UPDATES[name], [slice(0, 2), slice(2, 4)])
    assert whole and set(first) == set(whole)
    for parameter, expected in whole.items():
        # float64 rounding only; a share with other tasks or weights differs by ~1e-2.
        torch.testing.assert_close((first[parameter] + second[parameter]) / 2, expected,
                                   rtol=1e-9, atol=1e-12)


def test_batch_norm_over_the_whole_meta_batch_is_why_pretraining_syncs_it():
    """Pre-training classifies all tasks' images in one forward pass: its batch-norm statistics
    mix the tasks, so the halves' gradients do not average to the whole batch's. The metric
    methods normalise each task alone (forward_per_task), so theirs do."""
    spans = get_registry().get("nearest-neighbor")
    assert spans.batch_norm_spans_tasks
    assert not get_registry().get("prototypical").batch_norm_spans_tasks
    assert not get_registry().get("maml").batch_norm_spans_tasks
    (whole,) = meta_gradients("nearest-neighbor", {"hidden": 4}, [slice(0, 4)], side=16)
    first, second = meta_gradients("nearest-neighbor", {"hidden": 4},
                                   [slice(0, 2), slice(2, 4)], side=16)
    assert max(float(((first[name] + second[name]) / 2 - whole[name]).abs().max())
               for name in whole) > 1e-3
    (whole,) = meta_gradients("prototypical", {"hidden": 4}, [slice(0, 4)], side=16)
    first, second = meta_gradients("prototypical", {"hidden": 4},
                                   [slice(0, 2), slice(2, 4)], side=16)
    for name, expected in whole.items():
        torch.testing.assert_close((first[name] + second[name]) / 2, expected, rtol=1e-9,
                                   atol=1e-12)


@pytest.fixture
def one_process_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_across_ranks_computes_what_batch_norm_does(one_process_group, momentum):
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(
        3, momentum=momentum)).double()
    synced = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(
        3, momentum=momentum)).double()
    synced.load_state_dict(reference.state_dict())
    batch_norm_across_ranks(synced)
    assert type(synced[1]).__name__ == "BatchNorm2dAcrossRanks"
    assert synced.state_dict().keys() == reference.state_dict().keys()
    images = torch.randn(5, 2, 6, 6, dtype=torch.float64) * 3 + 1
    for _ in range(2):
        outputs = [model(images) for model in (reference, synced)]
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-10, atol=1e-12)
        for output in outputs:
            output.pow(3).sum().backward()
    for (name, expected), actual in zip(reference.named_parameters(), synced.parameters(),
                                        strict=True):
        torch.testing.assert_close(actual.grad, expected.grad, rtol=1e-9, atol=1e-12, msg=name)
    for name, expected in reference.state_dict().items():
        torch.testing.assert_close(synced.state_dict()[name], expected, rtol=1e-10, atol=0)
    reference.eval(), synced.eval()
    torch.testing.assert_close(synced(images), reference(images), rtol=1e-10, atol=1e-12)


def test_nproc_is_taken_out_of_the_command_each_process_runs():
    assert arguments_without_nproc(["train", "maml", "--nproc", "2", "--lr", "0.1",
                                    "--nproc=3"]) == ["train", "maml", "--lr", "0.1"]


def test_errors_name_the_rank_that_raised_them(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert error_label() == "Error (rank 3)"
    monkeypatch.setenv("RANK", "0")
    assert error_label() == "Error"


def test_the_collective_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("METACTL_COLLECTIVE_TIMEOUT", "12.5")
    assert collective_timeout().total_seconds() == 12.5
    monkeypatch.setenv("METACTL_COLLECTIVE_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="METACTL_COLLECTIVE_TIMEOUT='soon' is not"):
        collective_timeout()


def test_serial_reptile_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    reptile = get_registry().get("reptile")
    config = resolve_config("reptile", reptile.defaults, {}, {"reptile_batched": False}, {})
    with pytest.raises(UsageError, match="serial Reptile"):
        reptile(config)
