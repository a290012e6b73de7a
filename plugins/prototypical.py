"""Prototypical Networks as a metactl plugin."""

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
    query_loss,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.data.episodes import TaskBatch
    from metactl.plugins import AlgorithmRegistry


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
    summary = "classify by squared Euclidean distance to class-mean embeddings"
    paper = ("Snell, Swersky & Zemel (2017). Prototypical Networks for Few-shot Learning. "
             "NeurIPS.")
    defaults = {
        "*": {"backbone": "conv4", "hidden": 64, "dropblock": 0.0,
              "distance": "squared-euclidean", "optimizer": "adam", "lr": 1e-3, "lr_decay": 0.5,
              "lr_decay_every": 2000},
        # The paper trains Omniglot with 60 classes and 5 queries per class.
        "omniglot": {"train_way": 60, "train_query": 5, "episodes": 20000},
        # mini-ImageNet: 30-way 1-shot and 20-way 5-shot training episodes with 15 queries per
        # class; the paper trains until the validation loss stops falling.
        "mini-imagenet": {"train_query": 15, "episodes": 20000},
        "mini-imagenet/1-shot": {"train_way": 30},
        "mini-imagenet/5-shot": {"train_way": 20},
    }
    hyperparameter_help = {
        "backbone": "embedding network: conv4, resnet12 (hidden x 1, 2.5, 5, 10 channels) or one "
                    "a plugin registered",
        "hidden": "channels of each conv block",
        "dropblock": "DropBlock rate in resnet12's last two blocks (0: off)",
        "distance": "squared-euclidean (the paper) or cosine",
    }
    # Final Omniglot models: 60-way training episodes with 5 queries per class on the 1,200
    # train + val characters (section 3.1, and the authors' run_trainval.py).
    # mini-ImageNet: 30-way 1-shot and 20-way 5-shot training (the mini-imagenet defaults).
    paper_protocols = {
        **{f"omniglot-{shot}shot": {"dataset": "omniglot", "way": 5, "shot": shot,
                                    "train_way": 60, "train_query": 5, "episodes": 20000,
                                    "train_split": "trainval"}
           for shot in (1, 5)},
        **{f"mini-imagenet-{shot}shot": {"dataset": "mini-imagenet", "way": 5, "shot": shot}
           for shot in (1, 5)},
    }
    paper_results = (
        *(PaperResult("omniglot", way, shot, accuracy, f"omniglot-{shot}shot", source="Table 1")
          for way, shot, accuracy in ((5, 1, 98.8), (5, 5, 99.7), (20, 1, 96.0), (20, 5, 98.9))),
        *(PaperResult("mini-imagenet", 5, shot, accuracy, f"mini-imagenet-{shot}shot",
                      ci95=ci95, source="Table 2", tolerance=1.0)
          for shot, accuracy, ci95 in ((1, 49.42, 0.78), (5, 68.20, 0.66))),
    )
    device = DeviceSettings(cuda_graphs=True)

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.backbones import build_backbone

        return build_backbone(self.hparams["backbone"], spec.channels,
                              int(self.hparams["hidden"]), self.hparams)

    def task_state(self, model: nn.Module, support: LabelledImages) -> Tensor:
        from metactl.nn.backbones import embed_tasks
        from metactl.nn.metric import class_means

        return class_means(embed_tasks(model, support.images), support.labels, support.way)

    def loss(self, model: nn.Module, batch: TaskBatch) -> StepResult:
        """Support and query images embedded in one forward pass, as in the authors' code, so
        that batch norm normalises them with the same statistics."""
        import torch

        from metactl.nn.backbones import embed_tasks
        from metactl.nn.metric import class_means

        embeddings = embed_tasks(model, torch.cat([batch.support_images, batch.query_images], 1))
        support_count = batch.support_images.shape[1]
        prototypes = class_means(embeddings[:, :support_count], batch.support_labels, batch.way)
        return query_loss(self.scores(embeddings[:, support_count:], prototypes),
                          batch.query_labels)

    def logits(self, model: nn.Module, state: Tensor, query_images: Tensor) -> Tensor:
        from metactl.nn.backbones import embed_tasks

        return self.scores(embed_tasks(model, query_images), state)

    def scores(self, queries: Tensor, prototypes: Tensor) -> Tensor:
        """Query embeddings (tasks, queries, dim) and prototypes (tasks, way, dim) ->
        (tasks, queries, way): negative squared distances, or cosine similarities."""
        if self.hparams["distance"] == "cosine":
            import torch.nn.functional as functional

            return functional.cosine_similarity(queries.unsqueeze(2), prototypes.unsqueeze(1),
                                                dim=-1)
        return -squared_distances(queries, prototypes)


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(PrototypicalNetworks)
