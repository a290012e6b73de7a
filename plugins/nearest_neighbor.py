"""The nearest-neighbour baseline as a metactl plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.algorithm import LabelledImages, PaperResult
from metactl.nn.pretraining import SupervisedPretraining

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.nn.metric import EmbeddedSupport
    from metactl.plugins import AlgorithmRegistry


def nearest_support_scores(queries: Tensor, support: EmbeddedSupport) -> Tensor:
    """Per class, the cosine similarity of each query to its nearest support image of that
    class; the arg-max over classes is the 1-nearest-neighbour decision.

    Args:
        queries: (T, Q, dim).
        support: features (T, S, dim) with labels (T, S).

    Returns:
        (T, Q, way), values in [-1, 1].
    """
    from metactl.nn.metric import cosine_similarities, max_per_class

    similarities = cosine_similarities(queries, support.features)  # (T, Q, S)
    return max_per_class(similarities, support.labels, support.way)


class NearestNeighborBaseline(SupervisedPretraining):
    """The "baseline classifier" of Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra
    (2016), "Matching Networks for One Shot Learning", NeurIPS.

    A Conv-4 network is trained as an ordinary classifier: a linear layer over all training
    classes, cross-entropy on every image of each batch of tasks (``TaskBatch.classes`` gives
    the training class behind each task label). Few-shot tasks are then solved without any
    adaptation: a query takes the label of its nearest support image by cosine similarity in
    the backbone's feature space (the linear layer is dropped).
    """

    name = "nearest-neighbor"
    summary = "classifier pre-trained on all training classes, then 1-NN by cosine on features"
    paper = ("Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016). Matching Networks "
             "for One Shot Learning. NeurIPS (baseline classifier + nearest neighbour).")

    # Vinyals et al. (2016), Table 1, "Baseline classifier, cosine, no fine-tuning": one
    # classifier trained on the 1,200 train + val characters, tested at every setting.
    paper_protocols = {"omniglot": {"dataset": "omniglot", "train_split": "trainval"}}
    paper_results = tuple(
        PaperResult("omniglot", way, shot, accuracy, "omniglot", source="Table 1")
        for way, shot, accuracy in ((5, 1, 80.0), (5, 5, 95.0), (20, 1, 69.5), (20, 5, 89.1)))

    def task_state(self, model: nn.Module, support: LabelledImages) -> EmbeddedSupport:
        """Backbone features of the support images, (T, S, dim)."""
        from metactl.nn.backbones import embed_tasks
        from metactl.nn.metric import EmbeddedSupport

        return EmbeddedSupport(embed_tasks(model.backbone, support.images), support.labels,
                               support.way)

    def logits(self, model: nn.Module, state: EmbeddedSupport, query_images: Tensor) -> Tensor:
        """Nearest-support cosine similarity per class, (T, Q, way)."""
        from metactl.nn.backbones import embed_tasks

        return nearest_support_scores(embed_tasks(model.backbone, query_images), state)


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(NearestNeighborBaseline)
