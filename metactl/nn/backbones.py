"""Backbones shared by the algorithms: Conv-4 and ResNet-12, and those plugins register.

A backbone maps (N, C, H, W) images to (N, features). Algorithms that take one build it with
:func:`build_backbone` from their ``backbone`` setting (``--set backbone=resnet12``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn


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


class DropBlock(nn.Module):
    """DropBlock (Ghiasi, Lin & Le 2018): in training, zero square blocks of ``block_size``
    pixels of the feature maps at rate ``drop_rate`` and rescale the rest; the identity in
    evaluation or at rate 0. Maps (N, C, H, W) to the same shape."""

    def __init__(self, drop_rate: float, block_size: int = 5) -> None:
        super().__init__()
        self.drop_rate, self.block_size = drop_rate, block_size

    def forward(self, features: Tensor) -> Tensor:
        if not self.training or self.drop_rate <= 0:
            return features
        height, width = features.shape[-2:]
        block = min(self.block_size, height, width)
        # The rate at which block centres are drawn so that about drop_rate of pixels go.
        gamma = (self.drop_rate / block ** 2 * height * width
                 / ((height - block + 1) * (width - block + 1)))
        centres = torch.bernoulli(torch.full_like(features, min(gamma, 1.0)))
        dropped = nn.functional.max_pool2d(centres, block, stride=1, padding=block // 2)
        keep = 1 - dropped[..., :height, :width]
        return features * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class ResidualBlock(nn.Module):
    """One ResNet-12 block: three 3x3 convolutions with batch norm and leaky ReLU (0.1), a 1x1
    convolution on the shortcut, 2x2 max-pooling, then DropBlock (Lee et al. 2019, MetaOptNet;
    Oreshkin et al. 2018, TADAM). (N, C_in, H, W) -> (N, C_out, H // 2, W // 2)."""

    def __init__(self, in_channels: int, out_channels: int, drop_rate: float = 0.0,
                 block_size: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(3):
            layers += [nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3,
                                 padding=1, bias=False), nn.BatchNorm2d(out_channels)]
            if index < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      nn.BatchNorm2d(out_channels))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2),
                                 DropBlock(drop_rate, block_size))

    def forward(self, images: Tensor) -> Tensor:
        return self.out(self.body(images) + self.shortcut(images))


class ResNet12(nn.Module):
    """ResNet-12 in the MetaOptNet/TADAM layout: four residual blocks of ``hidden`` x (1, 2.5,
    5, 10) channels, 64-160-320-640 for ``hidden = 64``, then global average pooling.

    ``dropblock`` > 0 applies DropBlock at that rate in the last two blocks (MetaOptNet: 0.1,
    block size 5) during training. Maps (N, C, H, W) to (N, 10 * hidden): 640 features.
    """

    def __init__(self, in_channels: int = 3, hidden: int = 64, dropblock: float = 0.0,
                 block_size: int = 5) -> None:
        super().__init__()
        widths = [in_channels] + [int(round(hidden * scale)) for scale in (1, 2.5, 5, 10)]
        rates = [0.0, 0.0, dropblock, dropblock]
        self.encoder = nn.Sequential(*(
            ResidualBlock(widths[i], widths[i + 1], rates[i], block_size) for i in range(4)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images).mean(dim=(2, 3))


BackboneFactory = Callable[[int, int, Mapping[str, Any]], nn.Module]


def _conv4(channels: int, hidden: int, options: Mapping[str, Any]) -> nn.Module:
    return Conv4(in_channels=channels, hidden=hidden,
                 running_stats=bool(options.get("running_stats", True)))


def _resnet12(channels: int, hidden: int, options: Mapping[str, Any]) -> nn.Module:
    return ResNet12(channels, hidden, dropblock=float(options.get("dropblock", 0.0)),
                    block_size=int(options.get("dropblock_size", 5)))


BACKBONES: dict[str, BackboneFactory] = {"conv4": _conv4, "resnet12": _resnet12}


def backbone_names() -> list[str]:
    """The built-in backbones and those that plugins registered."""
    from metactl.plugins import load_plugins

    return [*BACKBONES, *load_plugins().backbones.names()]


def build_backbone(name: str, in_channels: int, hidden: int = 64,
                   options: Mapping[str, Any] | None = None, running_stats: bool = True
                   ) -> nn.Module:
    """The backbone called ``name`` (built in or registered by a plugin) for images of
    ``in_channels`` channels; ``options`` are the run's settings (``dropblock``...).

    Args:
        running_stats: batch norm keeps running statistics for evaluation mode (metric
            methods). Gradient-based inner loops that run the model per task with
            :func:`metactl.nn.functional.task_forward` need ``False``: batch norm then always
            uses the statistics of the current batch, as in MAML (Conv-4; factories see it as
            ``options["running_stats"]``).
    """
    factory = BACKBONES.get(name)
    if factory is None:
        from metactl.plugins import load_plugins, unknown_name

        registry = load_plugins().backbones
        if name not in registry:
            raise unknown_name("backbone", name, backbone_names())
        factory = registry.entry(name).factory
    return factory(in_channels, hidden, {**(options or {}), "running_stats": running_stats})


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
