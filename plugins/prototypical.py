"""Prototypical Networks as a metactl plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.algorithm import Algorithm, DeviceSettings, LabelledImages, ModelSpec

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.plugins import AlgorithmRegistry


def class_means(embeddings: Tensor, labels: Tensor, way: int) -> Tensor:
    """Mean embedding per class.

    Args:
        embeddings: (tasks, images, dim).
        labels: int64, (tasks, images), values in [0, way).

    Returns:
        (tasks, way, dim).
    """
    import torch

    one_hot = torch.nn.functional.one_hot(labels, way).to(embeddings.dtype)  # (tasks, images, way)
    sums = one_hot.transpose(1, 2) @ embeddings
    return sums / one_hot.sum(1).unsqueeze(-1).clamp_min(1)


def squared_distances(queries: Tensor, prototypes: Tensor) -> Tensor:
    """(tasks, queries, dim) and (tasks, way, dim) -> (tasks, queries, way)."""
    return (queries.unsqueeze(2) - prototypes.unsqueeze(1)).pow(2).sum(-1)


class PrototypicalNetworks(Algorithm):
    """Snell, Swersky & Zemel (2017), "Prototypical Networks for Few-shot Learning", NeurIPS.

    Embeds images with a Conv-4 network, represents each class by the mean embedding of its
    support images (its prototype) and classifies a query by a softmax over negative squared
    Euclidean distances to the prototypes. No inner loop: the task state is the prototypes.
    """

    name = "prototypical"
    family = "metric"
    batch_norm_spans_tasks = True  # one forward pass embeds every task of a meta-batch
    summary = "classify by squared Euclidean distance to class-mean embeddings"
    paper = ("Snell, Swersky & Zemel (2017). Prototypical Networks for Few-shot Learning. "
             "NeurIPS.")
    defaults = {
        "*": {"backbone": "conv4", "hidden": 64, "distance": "squared-euclidean",
              "optimizer": "adam", "lr": 1e-3, "lr_decay": 0.5, "lr_decay_every": 2000},
        # The paper trains Omniglot with 60 classes and 5 queries per class.
        "omniglot": {"train_way": 60, "train_query": 5, "episodes": 20000},
    }
    hyperparameter_help = {
        "backbone": "embedding network (conv4)",
        "hidden": "channels of each conv block",
        "distance": "squared-euclidean (the paper) or cosine",
    }
    device = DeviceSettings(channels_last=False)

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.backbones import build_backbone

        return build_backbone(self.hparams["backbone"], spec.channels, int(self.hparams["hidden"]))

    def task_state(self, model: nn.Module, support: LabelledImages) -> Tensor:
        from metactl.nn.backbones import embed_tasks

        return class_means(embed_tasks(model, support.images), support.labels, support.way)

    def logits(self, model: nn.Module, state: Tensor, query_images: Tensor) -> Tensor:
        from metactl.nn.backbones import embed_tasks

        queries = embed_tasks(model, query_images)
        if self.hparams["distance"] == "cosine":
            import torch.nn.functional as functional

            return functional.cosine_similarity(queries.unsqueeze(2), state.unsqueeze(1), dim=-1)
        return -squared_distances(queries, state)


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(PrototypicalNetworks)
