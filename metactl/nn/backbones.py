"""Backbones shared by the algorithms."""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from metactl.errors import UsageError


def conv_block(in_channels: int, out_channels: int, pool: bool = True,
               running_stats: bool = True) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU and 2x2 max-pooling: the Conv-4 unit. Without
    ``running_stats``, batch norm always normalises with the current batch's statistics."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=running_stats),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """Four conv blocks of ``hidden`` channels (Vinyals et al. 2016; Snell et al. 2017).

    Maps (batch, channels, height, width) to (batch, hidden * (height // 16) * (width // 16)):
    64 features for 28x28 Omniglot, 1,600 for 84x84 mini-ImageNet.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, blocks: int = 4,
                 running_stats: bool = True) -> None:
        super().__init__()
        widths = [in_channels] + [hidden] * blocks
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.encoder = nn.Sequential(*(conv_block(a, b, running_stats=running_stats)
                                       for a, b in pairs))

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images).flatten(1)


BACKBONES: dict[str, Callable[..., nn.Module]] = {"conv4": Conv4}


def build_backbone(name: str, in_channels: int, hidden: int = 64,
                   running_stats: bool = True) -> nn.Module:
    """A shared backbone by name, mapping (N, C, H, W) to (N, features).

    Args:
        running_stats: batch norm keeps running statistics for evaluation mode (metric
            methods). Gradient-based inner loops that run the model per task with
            :func:`metactl.nn.functional.task_forward` need ``False``: batch norm then always
            uses the statistics of the current batch, as in MAML.
    """
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, list(BACKBONES), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(BACKBONES)}"
        raise UsageError(f"unknown backbone {name!r}", hint)
    return BACKBONES[name](in_channels=in_channels, hidden=hidden, running_stats=running_stats)


def embed_tasks(encoder: nn.Module, images: Tensor) -> Tensor:
    """Embed (tasks, images, C, H, W) with one forward pass, batch-norm statistics per task in
    training (:func:`metactl.nn.functional.forward_per_task`); returns (tasks, images,
    features)."""
    from metactl.nn.functional import forward_per_task

    return forward_per_task(encoder, images).flatten(2)


def feature_size(backbone: nn.Module, channels: int, height: int, width: int) -> int:
    """Length of the feature vector ``backbone`` gives for one (channels, height, width) image;
    measured with a forward pass in evaluation mode, so batch-norm statistics are untouched."""
    was_training = backbone.training
    device = next(backbone.parameters()).device
    with torch.no_grad():
        probe = torch.zeros(2, channels, height, width, device=device)
        size = backbone.eval()(probe).shape[-1]
    backbone.train(was_training)
    return int(size)
