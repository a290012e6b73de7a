"""An example metactl plugin: nearest class centroid by scaled cosine similarity.

The module is what the entry point names. It imports no torch at top level, so that
``metactl --help`` and ``metactl plugins list`` stay fast; torch is imported inside the methods
that run the network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.algorithm import Algorithm, DeviceSettings, LabelledImages, ModelSpec

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.plugins import AlgorithmRegistry

__version__ = "0.1.0"


def unit_class_means(embeddings: Tensor, labels: Tensor, way: int) -> Tensor:
    """Mean of the L2-normalised embeddings of each class, normalised again.

    Args:
        embeddings: (tasks, images, dim).
        labels: int64, (tasks, images), values in [0, way).

    Returns:
        (tasks, way, dim), each row of unit length.
    """
    import torch.nn.functional as functional

    one_hot = functional.one_hot(labels, way).to(embeddings.dtype)  # (tasks, images, way)
    sums = one_hot.transpose(1, 2) @ functional.normalize(embeddings, dim=-1)
    return functional.normalize(sums, dim=-1)


class CosineCentroid(Algorithm):
    """Gidaris & Komodakis (2018), "Dynamic Few-Shot Visual Learning without Forgetting", CVPR.

    The cosine-similarity classifier of that paper, with class weights taken as the normalised
    mean embedding of each class's support images: a query's score for a class is
    ``scale * cos(query embedding, class centroid)``. The scale sharpens the softmax; without
    it cosine scores in [-1, 1] give nearly uniform probabilities and training stalls.
    """

    name = "example-cosine-centroid"
    family = "metric"
    summary = "example plugin: nearest class centroid by scaled cosine similarity"
    paper = ("Gidaris & Komodakis (2018). Dynamic Few-Shot Visual Learning without "
             "Forgetting. CVPR.")
    defaults = {
        "*": {"hidden": 64, "scale": 10.0, "lr": 1e-3},
        # Engine settings may be overridden too, per dataset or setting.
        "omniglot": {"train_way": 20, "train_query": 5},
    }
    hyperparameter_help = {
        "hidden": "channels of each Conv-4 block",
        "scale": "multiplies the cosine similarities before the softmax",
    }
    device = DeviceSettings(preferred=("cuda", "cpu"))

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.backbones import build_backbone

        return build_backbone("conv4", spec.channels, int(self.hparams["hidden"]))

    def task_state(self, model: nn.Module, support: LabelledImages) -> Tensor:
        """The class centroids, (tasks, way, dim)."""
        from metactl.nn.backbones import embed_tasks

        return unit_class_means(embed_tasks(model, support.images), support.labels, support.way)

    def logits(self, model: nn.Module, state: Tensor, query_images: Tensor) -> Tensor:
        """(tasks, queries, C, H, W) -> (tasks, queries, way)."""
        import torch.nn.functional as functional

        from metactl.nn.backbones import embed_tasks

        queries = functional.normalize(embed_tasks(model, query_images), dim=-1)
        return float(self.hparams["scale"]) * queries @ state.transpose(1, 2)


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(CosineCentroid)
