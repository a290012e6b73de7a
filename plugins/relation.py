"""Relation Networks as a metactl plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.algorithm import (
    Algorithm,
    DeviceSettings,
    LabelledImages,
    ModelSpec,
    PaperResult,
    StepResult,
    support_of,
)
from metactl.errors import UsageError

INITIALISATIONS = ("authors", "pytorch")

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

    As in the authors' code (floodsung/LearningToCompare_FSL): their initialisation, and the
    gradient norm of each module clipped to 0.5 on its own (``module_grad_clip``) before each
    Adam step. Their batch norm never leaves training mode, so test-time statistics come from
    each test batch; ``transductive_batch_norm: true`` does the same, task by task.
    """

    name = "relation"
    family = "metric"
    summary = "a learned relation module scores concatenated query and class feature maps"
    paper = ("Sung, Yang, Zhang, Xiang, Torr & Hospedales (2018). Learning to Compare: Relation "
             "Network for Few-Shot Learning. CVPR.")
    # Table 1: one model per setting; the authors' code trains on the first 1,200 characters
    # (train + val of the Vinyals split) and tests on the other 423.
    paper_protocols = {f"omniglot-{way}w{shot}s": {"dataset": "omniglot", "way": way,
                                                   "shot": shot, "train_split": "trainval"}
                       for way in (5, 20) for shot in (1, 5)}
    paper_results = tuple(
        PaperResult("omniglot", way, shot, accuracy, f"omniglot-{way}w{shot}s", ci95=ci95,
                    source="Table 1")
        for way, shot, accuracy, ci95 in ((5, 1, 99.6, 0.2), (5, 5, 99.8, 0.1),
                                          (20, 1, 97.6, 0.2), (20, 5, 99.1, 0.1)))
    defaults = {
        # Paper and code: Adam 1e-3 halved every 100,000 episodes, 1,000,000 episodes.
        "*": {"hidden": 64, "relation_hidden": 8, "relation_padding": 1, "init": "authors",
              "module_grad_clip": 0.5, "transductive_batch_norm": False,
              "optimizer": "adam", "lr": 1e-3, "lr_decay": 0.5, "lr_decay_every": 100000,
              "episodes": 1000000},
        # Queries per class of the paper's Omniglot training episodes.
        "omniglot/5-way/1-shot": {"train_query": 19},
        "omniglot/5-way/5-shot": {"train_query": 15},
        "omniglot/20-way/1-shot": {"train_query": 10},
        "omniglot/20-way/5-shot": {"train_query": 5},
        # mini-ImageNet (paper and code): no padding in the relation module's convs on the
        # larger maps, 500,000 episodes, 15 queries per class in 1-shot and 10 in 5-shot.
        "mini-imagenet": {"relation_padding": 0, "episodes": 500000},
        "mini-imagenet/5-way/1-shot": {"train_query": 15},
        "mini-imagenet/5-way/5-shot": {"train_query": 10},
    }
    hyperparameter_help = {
        "hidden": "filters of every conv block",
        "relation_hidden": "units of the relation module's hidden fully connected layer",
        "relation_padding": "padding of the relation module's convs (the paper's code: 1 on "
                            "Omniglot, 0 on mini-ImageNet's larger maps)",
        "init": "authors (the initialisation of the paper's code) or pytorch (PyTorch's "
                "defaults)",
        "module_grad_clip": "clip the gradient norm of the embedding and of the relation module, "
                            "each on its own, to this (the paper's code: 0.5; 0: no clipping)",
        "transductive_batch_norm": "batch norm on each task's own batches at test time too, as "
                                   "in the paper's code (false: running statistics)",
    }
    device = DeviceSettings(cuda_graphs=True)

    def __init__(self, hparams) -> None:
        super().__init__(hparams)
        # Runs trained before these settings existed: PyTorch's initialisation, running
        # statistics, no per-module clipping.
        for key, legacy in (("init", "pytorch"), ("module_grad_clip", 0.0),
                            ("transductive_batch_norm", False)):
            self.hparams.setdefault(key, legacy)
        if self.hparams["init"] not in INITIALISATIONS:
            raise UsageError(f"unknown initialisation {self.hparams['init']!r}",
                             f"use one of {', '.join(INITIALISATIONS)}")

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.relation import RelationNetwork, initialise_as_authors

        model = RelationNetwork(spec.channels, spec.height, spec.width,
                                hidden=int(self.hparams["hidden"]),
                                padding=int(self.hparams["relation_padding"]),
                                fc_hidden=int(self.hparams["relation_hidden"]),
                                transductive=bool(self.hparams["transductive_batch_norm"]))
        if self.hparams["init"] == "authors":
            initialise_as_authors(model)
        return model

    def task_state(self, model: nn.Module, support: LabelledImages) -> Tensor:
        """Class feature maps, summed over each class's support images, (T, way, hidden, h, w)."""
        from metactl.nn.metric import class_sums

        return class_sums(model.feature_maps(support.images), support.labels, support.way)

    def logits(self, model: nn.Module, state: Tensor, query_images: Tensor) -> Tensor:
        """Relation scores, (T, Q, way), in [0, 1]."""
        return model.scores(model.feature_maps(query_images), state)

    def loss(self, model: nn.Module, batch: TaskBatch) -> StepResult:
        scores = self.logits(model, self.adapt(model, support_of(batch)), batch.query_images)
        accuracy = (scores.argmax(-1) == batch.query_labels).float().mean()
        return StepResult(relation_loss(scores, batch.query_labels), accuracy)

    def meta_gradient(self, model: nn.Module, batch: TaskBatch) -> StepResult:
        """The gradient of the loss, with each module's norm clipped on its own as in the
        authors' code; the engine's ``grad_clip`` (off by default) then clips the whole."""
        import torch

        result = super().meta_gradient(model, batch)
        limit = float(self.hparams["module_grad_clip"])
        if limit > 0:
            for module in (model.embedding, model.relation):
                torch.nn.utils.clip_grad_norm_(module.parameters(), limit)
        return result

    def predict(self, model: nn.Module, support: LabelledImages, query_images: Tensor) -> Tensor:
        """Relation scores normalised to sum to 1 over the classes, (T, Q, way)."""
        scores = self.logits(model, self.adapt(model, support), query_images).clamp_min(1e-6)
        return scores / scores.sum(-1, keepdim=True)


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(RelationNetworks)
