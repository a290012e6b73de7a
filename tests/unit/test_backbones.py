"""The shared backbones: ResNet-12 and DropBlock on tiny inputs, selection by name, and
backbones registered by plugins. (ResNet-12 on 84x84 images is far too slow to train on a CPU;
its shapes and gradients are checked on small images here.)"""

from __future__ import annotations

import pytest
import torch

from metactl import plugins
from metactl.errors import PluginError, UsageError
from metactl.nn import BUILT_IN_BACKBONES
from metactl.nn.backbones import BACKBONES, DropBlock, ResNet12, build_backbone
from metactl.plugins import load_plugins
from metactl.testing import check_algorithm


def test_the_built_in_backbones_are_the_reserved_names():
    assert tuple(BACKBONES) == BUILT_IN_BACKBONES


def test_resnet12_has_the_metaoptnet_widths_and_pools_to_640_features():
    network = build_backbone("resnet12", 3)
    widths = [block.body[0].out_channels for block in network.encoder]
    assert widths == [64, 160, 320, 640]
    assert [layer.kernel_size for layer in network.encoder[0].body
            if isinstance(layer, torch.nn.Conv2d)] == [(3, 3)] * 3
    with torch.no_grad():
        assert tuple(network.eval()(torch.rand(2, 3, 16, 16)).shape) == (2, 640)


def test_a_small_resnet12_gives_gradients_to_every_parameter():
    torch.manual_seed(0)
    network = ResNet12(1, hidden=4, dropblock=0.1)
    features = network(torch.rand(3, 1, 28, 28))  # 28 -> 14 -> 7 -> 3 -> 1
    assert tuple(features.shape) == (3, 40)
    features.square().sum().backward()
    missing = [name for name, p in network.named_parameters()
               if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []


def test_dropblock_drops_square_blocks_in_training_only():
    torch.manual_seed(0)
    block = DropBlock(drop_rate=0.2, block_size=3)
    features = torch.ones(8, 4, 12, 12)
    assert torch.equal(block.eval()(features), features)
    dropped = block.train()(features)
    zeros = dropped == 0
    assert 0.1 < float(zeros.float().mean()) < 0.35
    assert torch.allclose(dropped.mean(), torch.tensor(1.0), atol=1e-5)  # rescaled
    assert torch.equal(DropBlock(0.0).train()(features), features)


def test_an_unknown_backbone_suggests_the_nearest():
    with pytest.raises(UsageError, match="unknown backbone 'resnet-12'") as raised:
        build_backbone("resnet-12", 3)
    assert "'resnet12'" in raised.value.hint


@pytest.mark.parametrize("name", ["prototypical", "matching", "nearest-neighbor", "finetune",
                                  "siamese"])
def test_algorithms_with_a_backbone_choice_take_resnet12(name):
    fewer_steps = {"finetune_steps": 3} if name == "finetune" else {}
    check_algorithm(name, {"backbone": "resnet12", "hidden": 4, **fewer_steps})


@pytest.fixture
def installed(monkeypatch):
    entry_points: list = []
    monkeypatch.setattr(plugins, "_entry_points", lambda: entry_points)
    load_plugins.cache_clear()
    yield entry_points
    load_plugins.cache_clear()


class Plugin:
    """An entry point whose module registers the backbones of ``factories``."""

    def __init__(self, name: str, factories: dict) -> None:
        self.name, self.dist = name, None
        self.factories = factories

    def load(self):
        import types

        from metactl import hookimpl

        factories = self.factories
        module = types.ModuleType(f"fake_backbone_plugin_{self.name}")

        @hookimpl
        def metactl_register_backbones(registry):
            for name, factory in factories.items():
                registry.add(name, factory)

        module.metactl_register_backbones = metactl_register_backbones
        return module


def tiny_linear(channels, hidden, options):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(hidden))


def test_a_plugin_registers_a_backbone_that_algorithms_find(installed):
    installed.append(Plugin("mine", {"tiny-linear": tiny_linear}))
    network = build_backbone("tiny-linear", 1, hidden=7)
    assert tuple(network(torch.rand(2, 1, 5, 5)).shape) == (2, 7)
    assert load_plugins().backbones.entry("tiny-linear").distribution == "unknown"


def test_a_plugin_may_not_take_a_built_in_backbone_name(installed):
    installed.append(Plugin("taker", {"conv4": tiny_linear}))
    failure, = load_plugins().failures
    assert "built into metactl" in failure.error
    assert isinstance(build_backbone("conv4", 1), torch.nn.Module)
    with pytest.raises(PluginError):
        plugins.BackboneRegistry().add("Bad Name", tiny_linear)
