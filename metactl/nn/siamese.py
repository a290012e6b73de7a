"""The networks of Siamese neural networks (Koch, Zemel & Salakhutdinov 2015): a twin encoder
with shared weights and the L1 + linear + sigmoid similarity head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metactl.errors import UsageError

PAIR_CHUNK = 1 << 24
"""Elements of |query - support| materialised at once when scoring all pairs of a task."""


def koch_initialisation(layer: nn.Module, weight_std: float) -> None:
    """The paper's initialisation: weights N(0, weight_std), biases N(0.5, 0.01); 0.01 for the
    conv layers and 0.2 for the fully connected ones (which trains much faster than PyTorch's
    default on the L1 head)."""
    nn.init.normal_(layer.weight, 0.0, weight_std)
    nn.init.normal_(layer.bias, 0.5, 1e-2)


class KochEncoder(nn.Module):
    """The paper's convolutional tower for 105x105 images: 64 10x10, 128 7x7, 128 4x4 and
    256 4x4 filters with ReLU, max-pooling after the first three; (N, C, 105, 105) ->
    (N, 9216)."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, 64, 10), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 7), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 4), nn.ReLU(inplace=True))
        for layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                koch_initialisation(layer, weight_std=1e-2)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images).flatten(1)


def build_siamese_encoder(name: str, channels: int, height: int, width: int, hidden: int
                          ) -> tuple[nn.Module, int]:
    """The convolutional tower and its output size: ``koch`` (the paper's, for >= 105 px
    images) or a shared backbone (``conv4``: 64 features on 28x28 Omniglot)."""
    from metactl.nn.backbones import backbone_names, build_backbone, feature_size

    if name != "koch" and name not in backbone_names():
        raise UsageError(f"unknown siamese backbone {name!r}",
                         f"use koch or one of {', '.join(backbone_names())}")
    encoder = KochEncoder(channels) if name == "koch" else build_backbone(name, channels, hidden)
    try:
        return encoder, feature_size(encoder, channels, height, width)
    except RuntimeError:
        raise UsageError(f"the {name} encoder cannot take {height}x{width} images",
                         "use --set backbone=conv4, or --set size=105 for koch") from None


class SiameseNetwork(nn.Module):
    """Twin encoder and similarity head.

    embed(x) = sigmoid(W_e encoder(x) + b_e), the paper's last fully connected layer;
    p(same | x1, x2) = sigmoid(sum_j alpha_j |embed(x1)_j - embed(x2)_j| + b).
    Both linear layers are initialised as in the paper.

    Args:
        encoder: maps (N, C, H, W) to (N, features).
        features: the encoder's output size.
        embedding: units of the sigmoid embedding layer (4096 in the paper).
    """

    def __init__(self, encoder: nn.Module, features: int, embedding: int = 4096) -> None:
        super().__init__()
        self.encoder = encoder
        self.embedding = nn.Linear(features, embedding)
        self.head = nn.Linear(embedding, 1)
        koch_initialisation(self.embedding, weight_std=0.2)
        koch_initialisation(self.head, weight_std=0.2)

    def embed(self, images: Tensor) -> Tensor:
        """(T, N, C, H, W) -> (T, N, embedding), values in (0, 1)."""
        from metactl.nn.functional import forward_per_task

        return torch.sigmoid(self.embedding(forward_per_task(self.encoder, images).flatten(2)))

    def pair_logits(self, first: Tensor, second: Tensor) -> Tensor:
        """Logit of "same class" for embeddings (..., embedding) paired element-wise; (...)."""
        return self.head((first - second).abs()).squeeze(-1)

    def all_pair_logits(self, queries: Tensor, supports: Tensor) -> Tensor:
        """Logit of "same class" for every query with every support image.

        Args:
            queries: (T, Q, embedding).
            supports: (T, S, embedding).

        Returns:
            (T, Q, S).
        """
        per_query = supports.shape[0] * supports.shape[1] * supports.shape[2]
        chunk = max(1, PAIR_CHUNK // max(per_query, 1))
        return torch.cat([self.pair_logits(part.unsqueeze(2), supports.unsqueeze(1))
                          for part in queries.split(chunk, dim=1)], dim=1)
