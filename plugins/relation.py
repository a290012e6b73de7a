"""Relation Networks as a metactl plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.algorithm import Algorithm, LabelledImages, ModelSpec, StepResult, support_of

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.data.episodes import TaskBatch
    from metactl.plugins import AlgorithmRegistry


def relation_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Mean squared error between relation scores and the one-hot labels.

    Args:
        scores: (T, Q, way), values in [0, 1].
        labels: int64, (T, Q), values in [0, way).

    Returns:
        a scalar.
    """
    import torch.nn.functional as functional

    target = functional.one_hot(labels, scores.shape[-1]).to(scores.dtype)
    return functional.mse_loss(scores, target)


class RelationNetworks(Algorithm):
    """Sung, Yang, Zhang, Xiang, Torr & Hospedales (2018), "Learning to Compare: Relation Network
    for Few-Shot Learning", CVPR.

    An embedding module (four conv blocks, the last two without pooling) turns each image into
    feature maps; a class is represented by the element-wise *sum* of its support images' maps.
    A learned relation module (two conv blocks and two fully connected layers, sigmoid output)
    scores each query-class pair from their concatenated maps, in [0, 1]. Training regresses the
    scores onto the one-hot labels with a mean squared error. No inner loop: the task state is
    the class feature maps.
    """

    name = "relation"
    family = "metric"
    batch_norm_spans_tasks = True  # one forward pass embeds every task of a meta-batch
    summary = "a learned relation module scores concatenated query and class feature maps"
    paper = ("Sung, Yang, Zhang, Xiang, Torr & Hospedales (2018). Learning to Compare: Relation "
             "Network for Few-Shot Learning. CVPR.")
    defaults = {
        # Paper and code: Adam 1e-3 halved every 100,000 episodes, 1,000,000 episodes.
        "*": {"hidden": 64, "relation_hidden": 8, "relation_padding": 1,
              "optimizer": "adam", "lr": 1e-3, "lr_decay": 0.5, "lr_decay_every": 100000,
              "episodes": 1000000},
        # Queries per class of the paper's Omniglot training episodes.
        "omniglot/5-way/1-shot": {"train_query": 19},
        "omniglot/5-way/5-shot": {"train_query": 15},
        "omniglot/20-way/1-shot": {"train_query": 10},
        "omniglot/20-way/5-shot": {"train_query": 5},
    }
    hyperparameter_help = {
        "hidden": "filters of every conv block",
        "relation_hidden": "units of the relation module's hidden fully connected layer",
        "relation_padding": "padding of the relation module's convs (the paper's code: 1 on "
                            "Omniglot, 0 on mini-ImageNet's larger maps)",
    }

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.relation import RelationNetwork

        return RelationNetwork(spec.channels, spec.height, spec.width,
                               hidden=int(self.hparams["hidden"]),
                               padding=int(self.hparams["relation_padding"]),
                               fc_hidden=int(self.hparams["relation_hidden"]))

    def task_state(self, model: nn.Module, support: LabelledImages) -> Tensor:
        """Class feature maps, summed over each class's support images, (T, way, hidden, h, w)."""
        from metactl.nn.metric import class_sums

        return class_sums(model.feature_maps(support.images), support.labels, support.way)

    def logits(self, model: nn.Module, state: Tensor, query_images: Tensor) -> Tensor:
        """Relation scores, (T, Q, way), in [0, 1]."""
        return model.scores(model.feature_maps(query_images), state)

    def loss(self, model: nn.Module, batch: TaskBatch) -> StepResult:
        scores = self.logits(model, self.adapt(model, support_of(batch)), batch.query_images)
        accuracy = (scores.argmax(-1) == batch.query_labels).float().mean().item()
        return StepResult(relation_loss(scores, batch.query_labels), accuracy)

    def predict(self, model: nn.Module, support: LabelledImages, query_images: Tensor) -> Tensor:
        """Relation scores normalised to sum to 1 over the classes, (T, Q, way)."""
        scores = self.logits(model, self.adapt(model, support), query_images).clamp_min(1e-6)
        return scores / scores.sum(-1, keepdim=True)


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(RelationNetworks)
