"""Networks that optimization-based methods adapt per task (MAML, Reptile, Meta-Learner LSTM).

Unlike the embedding backbones of :mod:`metactl.nn.backbones`, these end in a linear layer with
one output per class, and their batch norm is meant to be used with the statistics of the
current batch (``running_stats=False``, as in MAML and Reptile) or with running statistics kept
per task by the inner loop (Meta-Learner LSTM).
"""

from __future__ import annotations

from torch import Tensor, nn

from metactl.errors import UsageError

DOWNSAMPLING = ("max-pool", "stride")


class ConvLearner(nn.Module):
    """Conv-4 with a linear classifier: ``blocks`` x [3x3 conv of ``hidden`` channels, batch norm,
    ReLU, halving] then a linear layer.

    ``downsample="max-pool"`` halves with 2x2 max-pooling (Vinyals et al. 2016; MAML and Reptile
    on mini-ImageNet; Ravi & Larochelle); ``"stride"`` uses stride-2 convolutions instead, as MAML
    and Reptile do for Omniglot (28 -> 14 -> 7 -> 4 -> 2). The features are flattened (the
    reference MAML code averages them over space for Omniglot; Reptile's flattens).

    The convolutions have no bias: the batch norm that follows removes it.

    Maps (batch, in_channels, height, width) to (batch, way).
    """

    def __init__(self, in_channels: int, way: int, image_size: tuple[int, int],
                 hidden: int = 64, blocks: int = 4, downsample: str = "max-pool",
                 running_stats: bool = False, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1) -> None:
        super().__init__()
        if downsample not in DOWNSAMPLING:
            raise UsageError(f"unknown downsampling {downsample!r}",
                             f"use one of {', '.join(DOWNSAMPLING)}")
        stride = 2 if downsample == "stride" else 1
        height, width = image_size
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(blocks):
            layers += [nn.Conv2d(channels, hidden, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(hidden, eps=bn_eps, momentum=bn_momentum,
                                      track_running_stats=running_stats),
                       nn.ReLU()]
            if downsample == "max-pool":
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            else:
                height, width = (height + 1) // 2, (width + 1) // 2
            channels = hidden
        if height < 1 or width < 1:
            raise UsageError(f"{image_size[0]}x{image_size[1]} images are too small for "
                             f"{blocks} halvings", "use larger images or --set downsample=stride")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(hidden * height * width, way)

    @property
    def way(self) -> int:
        return self.classifier.out_features

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images).flatten(1))


class RegressionMLP(nn.Module):
    """A fully connected regressor: ``layers`` hidden layers of ``hidden`` ReLU units (MAML's
    sinusoid model: 2 x 40). Maps (batch, inputs) to (batch, outputs)."""

    def __init__(self, inputs: int, outputs: int = 1, hidden: int = 40, layers: int = 2) -> None:
        super().__init__()
        sizes = [inputs] + [hidden] * layers
        blocks: list[nn.Module] = []
        for size_in, size_out in zip(sizes[:-1], sizes[1:], strict=True):
            blocks += [nn.Linear(size_in, size_out), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.output = nn.Linear(sizes[-1], outputs)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.output(self.features(inputs))


def class_probabilities(logits: Tensor, way: int) -> Tensor:
    """Softmax over the first ``way`` outputs of a classifier trained with at least ``way``
    classes: (T, Q, outputs) -> (T, Q, way)."""
    outputs = logits.shape[-1]
    if way > outputs:
        raise UsageError(f"the model's classifier has {outputs} outputs, the tasks have {way} "
                         "classes", f"use --way {outputs} or fewer, or train with --way {way}")
    return logits[..., :way].softmax(-1)
