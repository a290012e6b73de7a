"""The engine's outer optimizers take their settings: rmsprop's momentum and decay (alpha)."""

from __future__ import annotations

import torch

from metactl.engine.config import resolve_config
from metactl.engine.trainer import build_optimizer
from metactl_plugins.mann import MemoryAugmentedNetworks


def rmsprop_by_hand(gradients, lr, alpha, momentum, eps=1e-8):
    """The parameter after RMSprop steps with momentum, from 0: v = alpha v + (1 - alpha) g^2,
    b = momentum b + g / (sqrt(v) + eps), p = p - lr b."""
    parameter = square = buffer = torch.zeros_like(gradients[0])
    for gradient in gradients:
        square = alpha * square + (1 - alpha) * gradient ** 2
        buffer = momentum * buffer + gradient / (square.sqrt() + eps)
        parameter = parameter - lr * buffer
    return parameter


def test_rmsprop_steps_with_the_configured_momentum_and_decay():
    config = resolve_config("mann", MemoryAugmentedNetworks.defaults, {},
                            {"optimizer": "rmsprop", "lr": 0.01},
                            {"momentum": 0.9, "rmsprop_alpha": 0.95})
    model = torch.nn.Linear(3, 1, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    optimizer, _ = build_optimizer(model, config)
    gradients = [torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64) * scale
                 for scale in (1.0, 0.3, 2.0)]
    for gradient in gradients:
        model.weight.grad = gradient.clone()
        optimizer.step()
    expected = rmsprop_by_hand(gradients, 0.01, 0.95, 0.9)
    assert torch.allclose(model.weight.detach(), expected, atol=1e-12)
    without = rmsprop_by_hand(gradients, 0.01, 0.99, 0.0)  # what the engine did before
    assert not torch.allclose(model.weight.detach(), without, atol=1e-4)


def test_mann_defaults_are_the_paper_s_rmsprop_and_100000_updates_of_16_sequences():
    config = resolve_config("mann", MemoryAugmentedNetworks.defaults, {}, {}, {})
    assert (config["optimizer"], config["lr"], config["momentum"], config["rmsprop_alpha"]) == (
        "rmsprop", 1e-4, 0.9, 0.95)
    assert config["meta_batch"] == 16 and config["episodes"] // config["meta_batch"] == 100_000
