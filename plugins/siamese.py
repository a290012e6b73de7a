"""Siamese neural networks as a metactl plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.algorithm import Algorithm, LabelledImages, ModelSpec, StepResult
from metactl.errors import UsageError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.data.episodes import TaskBatch
    from metactl.nn.metric import EmbeddedSupport
    from metactl.plugins import AlgorithmRegistry


def class_similarities(pair_logits: Tensor, support_labels: Tensor, way: int) -> Tensor:
    """Mean probability "same class" of each query with each class's support images.

    Args:
        pair_logits: (T, Q, S), the head's logits for every query-support pair.
        support_labels: int64, (T, S), values in [0, way).

    Returns:
        (T, Q, way), values in (0, 1); with one shot, the similarity to that class's image.
    """
    from metactl.nn.metric import mean_per_class

    return mean_per_class(pair_logits.sigmoid(), support_labels, way)


class SiameseNetworks(Algorithm):
    """Koch, Zemel & Salakhutdinov (2015), "Siamese Neural Networks for One-shot Image
    Recognition", ICML Deep Learning Workshop.

    Twin convolutional encoders with shared weights embed two images (a sigmoid fully connected
    layer on top); the L1 distance between the embeddings, weighted by a learned linear layer
    and squashed by a sigmoid, is the probability that the images show the same class. The
    network is trained as a verifier, with binary cross-entropy on same/different pairs drawn
    from each batch of tasks (half of each, optionally under the paper's random affine
    distortions), not on the tasks' classification loss. One-shot classification picks the
    class whose support image is most similar (the mean similarity over a class's images when
    there are several).

    The paper's encoder is for 105x105 images (``backbone=koch``); on 28x28 Omniglot the default
    is a Conv-4 tower (64 features) under the paper's 4096-unit sigmoid layer and L1 head.
    Koch et al.'s layer-wise learning rates and momentum schedules are not reproduced: the
    engine's single optimizer (Adam) trains every layer, with ``weight_decay`` for their L2.
    """

    name = "siamese"
    family = "metric"
    batch_norm_spans_tasks = True  # one forward pass embeds every task of a meta-batch
    summary = "verification network: L1 distance of twin embeddings -> P(same class)"
    paper = ("Koch, Zemel & Salakhutdinov (2015). Siamese Neural Networks for One-shot Image "
             "Recognition. ICML Deep Learning Workshop.")
    defaults = {
        "*": {"backbone": "conv4", "hidden": 64, "embedding": 4096, "pairs": 128,
              "distortions": False, "optimizer": "adam", "lr": 1e-3, "lr_decay": 0.5,
              "lr_decay_every": 2000},
        # Many classes per batch so that the "different" pairs are varied (128 pairs, paper).
        "omniglot": {"train_way": 20, "train_query": 5, "episodes": 20000},
    }
    hyperparameter_help = {
        "backbone": "convolutional tower: conv4 (28 px) or koch (the paper's, 105 px)",
        "hidden": "channels of each conv block of conv4",
        "embedding": "units of the sigmoid embedding layer (4096 in the paper)",
        "pairs": "same/different training pairs per task, half of each",
        "distortions": "apply the paper's random affine distortions to training images",
    }

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.siamese import SiameseNetwork, build_siamese_encoder

        encoder, features = build_siamese_encoder(self.hparams["backbone"], spec.channels,
                                                  spec.height, spec.width,
                                                  int(self.hparams["hidden"]))
        return SiameseNetwork(encoder, features, int(self.hparams["embedding"]))

    def task_state(self, model: nn.Module, support: LabelledImages) -> EmbeddedSupport:
        """Embedded support images, (T, S, embedding)."""
        from metactl.nn.metric import EmbeddedSupport

        return EmbeddedSupport(model.embed(support.images), support.labels, support.way)

    def logits(self, model: nn.Module, state: EmbeddedSupport, query_images: Tensor) -> Tensor:
        """Log of the mean similarity per class, (T, Q, way); the default ``predict`` (a
        softmax) therefore returns the similarities normalised over the classes."""
        similarities = class_similarities(
            model.all_pair_logits(model.embed(query_images), state.features), state.labels,
            state.way)
        return similarities.clamp_min(1e-12).log()

    def loss(self, model: nn.Module, batch: TaskBatch) -> StepResult:
        """Binary cross-entropy on same/different pairs of the batch's images; reports the
        one-shot query accuracy, and the pairs' verification accuracy as ``pair_accuracy``."""
        import torch
        import torch.nn.functional as functional

        from metactl.nn.pairs import random_affine, sample_pairs, unordered_pair_counts

        per_class = batch.shot + batch.query
        same_available, different_available = unordered_pair_counts(batch.way, per_class)
        if same_available == 0:
            raise UsageError("siamese training draws same-class pairs, and its tasks have one "
                             "image per class", "set train_query to 1 or more")
        images = torch.cat([batch.support_images, batch.query_images], dim=1)
        labels = torch.cat([batch.support_labels, batch.query_labels], dim=1)
        if self.hparams["distortions"]:
            images = random_affine(images.flatten(0, 1)).view_as(images)
        embeddings = model.embed(images)  # (T, N, embedding)
        wanted = int(self.hparams["pairs"])
        pairs = sample_pairs(labels, min(wanted // 2, same_available),
                             min(wanted - wanted // 2, different_available))
        index = pairs.first.unsqueeze(-1).expand(-1, -1, embeddings.shape[-1])
        first = embeddings.gather(1, index)
        second = embeddings.gather(1, pairs.second.unsqueeze(-1).expand_as(index))
        pair_logits = model.pair_logits(first, second)  # (T, P)
        loss = functional.binary_cross_entropy_with_logits(pair_logits, pairs.same)
        with torch.no_grad():
            shots = batch.support_images.shape[1]
            accuracy = None
            if batch.query:
                scores = class_similarities(
                    model.all_pair_logits(embeddings[:, shots:], embeddings[:, :shots]),
                    batch.support_labels, batch.way)
                accuracy = (scores.argmax(-1) == batch.query_labels).float().mean().item()
            pair_accuracy = ((pair_logits > 0).float() == pairs.same).float().mean().item()
        return StepResult(loss, accuracy, {"pair_accuracy": pair_accuracy})


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(SiameseNetworks)
