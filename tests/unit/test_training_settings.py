"""The outer optimizer's settings change the update they should, measured on real tasks of the
tiny Omniglot store: sgd and its momentum, weight decay, rmsprop, grad_clip, the learning-rate
schedule; and the device settings a CPU can take (channels_last, deterministic, compile)."""

from __future__ import annotations

import pytest
import torch

from metactl.engine.config import resolve_config
from metactl.engine.device import placement_for
from metactl.engine.run import RunFolder
from metactl.engine.trainer import Trainer
from metactl.plugins import get_registry

PrototypicalNetworks = get_registry().get("prototypical")


def make_trainer(root, folder, **settings) -> Trainer:
    values = {"episodes": 10, "train_way": 5, "train_query": 5, "val_episodes": 0,
              "device": "cpu", "seed": 3, **settings}
    config = resolve_config("prototypical", PrototypicalNetworks.defaults, {}, values, {})
    folder.mkdir(exist_ok=True)
    return Trainer(PrototypicalNetworks(config), config, RunFolder(folder), lambda _: None,
                   show_progress=False, root=str(root))


def flat(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])


def parameters_after(trainer: Trainer, steps: int) -> list[torch.Tensor]:
    """The parameters before training and after each of ``steps`` steps."""
    seen = [flat(trainer)]
    for _ in range(steps):
        trainer._one_step()
        seen.append(flat(trainer))
    return seen


@pytest.fixture
def trainer_for(tiny_omniglot_root, tmp_path):
    def build(**settings) -> Trainer:
        return make_trainer(tiny_omniglot_root, tmp_path / f"run{len(list(tmp_path.iterdir()))}",
                            **settings)
    return build


def test_grad_clip_bounds_the_sgd_step(trainer_for):
    before, after = parameters_after(
        trainer_for(optimizer="sgd", lr=1.0, momentum=0.0, grad_clip=1e-3), 1)
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-4)
    before, after = parameters_after(trainer_for(optimizer="sgd", lr=1.0, momentum=0.0), 1)
    assert float((after - before).norm()) > 1e-2  # unclipped, the same step is far longer


def test_weight_decay_pulls_the_weights_towards_zero(trainer_for):
    plain = parameters_after(trainer_for(optimizer="sgd", lr=0.1, momentum=0.0), 1)
    decayed = parameters_after(trainer_for(optimizer="sgd", lr=0.1, momentum=0.0,
                                           weight_decay=0.5), 1)
    assert torch.equal(plain[0], decayed[0])  # the same initial weights and task
    torch.testing.assert_close(decayed[1] - plain[1], -0.1 * 0.5 * plain[0], rtol=1e-4,
                               atol=1e-7)


def test_sgd_momentum_adds_the_previous_step(trainer_for):
    plain = parameters_after(trainer_for(optimizer="sgd", lr=0.1, momentum=0.0), 2)
    heavy = parameters_after(trainer_for(optimizer="sgd", lr=0.1, momentum=0.9), 2)
    torch.testing.assert_close(heavy[1], plain[1])  # the first step has no history
    torch.testing.assert_close(heavy[2] - plain[2], 0.9 * (plain[1] - plain[0]), rtol=1e-4,
                               atol=1e-7)


def test_rmsprop_scales_each_gradient_by_its_running_size(trainer_for):
    trainer = trainer_for(optimizer="rmsprop", lr=1e-3)
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.RMSprop)
    before, after = parameters_after(trainer, 1)
    gradient = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
    # The first step: square average (1 - alpha) g^2 (minus the mean's square when centred).
    average = (1 - group["alpha"]) * gradient.pow(2)
    if group.get("centered"):
        average = average - ((1 - group["alpha"]) * gradient).pow(2)
    expected = -1e-3 * gradient / (average.sqrt() + group["eps"])
    torch.testing.assert_close(after - before, expected, rtol=1e-3, atol=1e-8)
    adam = parameters_after(trainer_for(optimizer="adam", lr=1e-3), 1)
    assert not torch.allclose(adam[1] - adam[0], expected, rtol=1e-2, atol=1e-8)


def test_the_schedule_decays_the_step_length(trainer_for):
    """With a clipped sgd step every update is lr * clip long, so the lengths show the rate."""
    trainer = trainer_for(optimizer="sgd", lr=1.0, momentum=0.0, grad_clip=1e-3, lr_decay=0.5,
                          lr_decay_every=2, val_every=10)  # a metrics record every step
    seen = parameters_after(trainer, 5)
    lengths = [float((later - earlier).norm()) for earlier, later in zip(seen[:-1], seen[1:],
                                                                          strict=True)]
    assert lengths == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4], rel=1e-4)
    records = [record["lr"] for record in trainer.run.read_metrics()]
    assert records == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25])  # the rate of the next step


def test_channels_last_trains_like_the_default_layout(trainer_for):
    default = trainer_for(optimizer="sgd", lr=0.1)
    trainer = trainer_for(optimizer="sgd", lr=0.1, channels_last=True)
    weights = [p for p in trainer.model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    initial = flat(default)
    assert torch.equal(flat(trainer), initial)
    expected, actual = default._one_step(), trainer._one_step()
    assert actual["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    # Other kernels round differently, and batch norm's backward magnifies that: compare the
    # step's direction, not its digits.
    similarity = torch.nn.functional.cosine_similarity(flat(trainer) - initial,
                                                       flat(default) - initial, dim=0)
    assert float(similarity) > 0.99


@pytest.fixture
def restore_determinism():
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_deterministic_turns_on_deterministic_kernels(trainer_for, restore_determinism):
    torch.use_deterministic_algorithms(False)
    first = parameters_after(trainer_for(optimizer="sgd", lr=0.1, deterministic=True), 2)
    assert torch.are_deterministic_algorithms_enabled()
    second = parameters_after(trainer_for(optimizer="sgd", lr=0.1, deterministic=True), 2)
    assert torch.equal(first[2], second[2])


def test_compile_is_accepted_and_reaches_the_placement():
    config = resolve_config("prototypical", PrototypicalNetworks.defaults, {},
                            {"device": "cpu"}, {"compile": True})
    assert placement_for(config, PrototypicalNetworks.device).compile
    config = resolve_config("prototypical", PrototypicalNetworks.defaults, {},
                            {"device": "cpu"}, {"compile": False})
    assert not placement_for(config, PrototypicalNetworks.device).compile


def test_only_algorithms_that_train_without_queries_accept_train_query_zero():
    from metactl.engine.trainer import check_queries
    from metactl.errors import UsageError

    for name in ("reptile", "nearest-neighbor", "finetune"):
        algorithm = get_registry().get(name)
        check_queries(algorithm(algorithm.defaults["*"]), {"train_query": 0})
    with pytest.raises(UsageError, match="train_query must be positive"):
        check_queries(PrototypicalNetworks({}), {"train_query": 0})
