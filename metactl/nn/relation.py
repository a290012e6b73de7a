"""The networks of Relation Networks (Sung et al. 2018): an embedding module that keeps
spatial feature maps, and a relation module that scores a pair of concatenated maps."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def relation_block(in_channels: int, out_channels: int, padding: int, pool: bool,
                   running_stats: bool = True) -> nn.Sequential:
    """3x3 convolution of 64 filters, batch norm, ReLU and, if ``pool``, 2x2 max-pooling.
    Without ``running_stats`` the batch norm always uses the statistics of its input batch."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=padding),
                               nn.BatchNorm2d(out_channels, track_running_stats=running_stats),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class RelationEmbedding(nn.Module):
    """Four conv blocks; the first two (unpadded) pool, the last two (padded) do not, as in the
    paper and its code. (N, C, 28, 28) -> (N, hidden, 5, 5); (N, C, 84, 84) -> (N, hidden, 19, 19).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, running_stats: bool = True
                 ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            relation_block(in_channels, hidden, 0, pool=True, running_stats=running_stats),
            relation_block(hidden, hidden, 0, pool=True, running_stats=running_stats),
            relation_block(hidden, hidden, 1, pool=False, running_stats=running_stats),
            relation_block(hidden, hidden, 1, pool=False, running_stats=running_stats))

    def forward(self, images: Tensor) -> Tensor:
        return self.blocks(images)


class RelationModule(nn.Module):
    """Two conv blocks with pooling, then FC-ReLU-FC-sigmoid: a relation score in [0, 1].

    Maps (N, 2 * hidden, h, w) concatenated feature maps to (N,). The paper's code pads the
    convolutions on Omniglot (5x5 maps -> 1x1) and not on mini-ImageNet (19x19 -> 3x3).
    """

    def __init__(self, hidden: int, map_size: tuple[int, int], padding: int,
                 fc_hidden: int = 8, running_stats: bool = True) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            relation_block(2 * hidden, hidden, padding, pool=True, running_stats=running_stats),
            relation_block(hidden, hidden, padding, pool=True, running_stats=running_stats))
        with torch.no_grad():
            flat = self.blocks.eval()(torch.zeros(2, 2 * hidden, *map_size)).flatten(1).shape[1]
        self.blocks.train()
        self.fc = nn.Sequential(nn.Linear(flat, fc_hidden), nn.ReLU(inplace=True),
                                nn.Linear(fc_hidden, 1))

    def forward(self, pairs: Tensor) -> Tensor:
        return torch.sigmoid(self.fc(self.blocks(pairs).flatten(1))).squeeze(-1)


def initialise_as_authors(module: nn.Module) -> None:
    """The initialisation of the authors' code (LearningToCompare_FSL, ``weights_init``):
    convolutions N(0, 2 / (3 * 3 * out_channels)) with zero bias, batch norm scale 1 and shift
    0, linear layers N(0, 0.01^2) with a bias of 1."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            fan_out = layer.kernel_size[0] * layer.kernel_size[1] * layer.out_channels
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / fan_out))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.ones_(layer.bias)


class RelationNetwork(nn.Module):
    """Embedding and relation modules, trained end to end.

    With ``transductive`` batch norm, as in the authors' code (batch norm in training mode at
    test time too), every batch-norm layer normalises with the statistics of the batch it is
    given, in training and evaluation alike, and each task is a batch of its own: its support
    images, its queries and its query-class pairs are each normalised on their own.

    Args:
        channels, height, width: the image shape.
        hidden: filters of every conv block (64 in the paper).
        padding: padding of the relation module's convolutions.
        fc_hidden: units of the relation module's hidden FC layer (8 in the paper).
        transductive: batch statistics per task and per set, also at test time.
    """

    def __init__(self, channels: int, height: int, width: int, hidden: int = 64,
                 padding: int = 1, fc_hidden: int = 8, transductive: bool = False) -> None:
        super().__init__()
        self.transductive = transductive
        self.embedding = RelationEmbedding(channels, hidden, running_stats=not transductive)
        with torch.no_grad():
            maps = self.embedding.eval()(torch.zeros(2, channels, height, width))
        self.embedding.train()
        self.relation = RelationModule(hidden, tuple(maps.shape[2:]), padding, fc_hidden,
                                       running_stats=not transductive)

    def per_task(self, module: nn.Module, inputs: Tensor) -> Tensor:
        """``module`` over (T, N, ...) inputs, batch-norm statistics per task; returns
        (T, N, ...). Transductive: each task is a batch of its own also at test time."""
        from metactl.nn.functional import forward_per_task

        if self.transductive:
            return torch.func.vmap(module)(inputs)
        return forward_per_task(module, inputs)

    def feature_maps(self, images: Tensor) -> Tensor:
        """(T, N, C, H, W) -> (T, N, hidden, h, w)."""
        return self.per_task(self.embedding, images)

    def scores(self, queries: Tensor, classes: Tensor) -> Tensor:
        """Relation score of every query with every class.

        Args:
            queries: query feature maps, (T, Q, hidden, h, w).
            classes: class feature maps, (T, way, hidden, h, w).

        Returns:
            (T, Q, way), values in [0, 1].
        """
        tasks, count = queries.shape[:2]
        way = classes.shape[1]
        pairs = torch.cat([classes.unsqueeze(1).expand(tasks, count, *classes.shape[1:]),
                           queries.unsqueeze(2).expand(tasks, count, way, *queries.shape[2:])],
                          dim=3)  # (T, Q, way, 2 * hidden, h, w), class first as in the paper
        return self.per_task(self.relation, pairs.flatten(1, 2)).view(tasks, count, way)
