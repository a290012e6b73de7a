"""Matching Networks as a metactl plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.algorithm import Algorithm, DeviceSettings, LabelledImages, ModelSpec

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.nn.metric import EmbeddedSupport
    from metactl.plugins import AlgorithmRegistry


def attention(queries: Tensor, supports: Tensor) -> Tensor:
    """a(x, x_i): softmax over the support set of the cosine similarities.

    Args:
        queries: f(x), (T, Q, dim).
        supports: g(x_i), (T, S, dim).

    Returns:
        (T, Q, S), each row summing to 1.
    """
    from metactl.nn.metric import cosine_similarities

    return cosine_similarities(queries, supports).softmax(-1)


def class_log_probabilities(queries: Tensor, support: EmbeddedSupport) -> Tensor:
    """log P(y = c | x, S) = log sum_{i: y_i = c} a(x, x_i): the attention mass per class.

    Args:
        queries: f(x), (T, Q, dim).
        support: g(x_i) (T, S, dim) with labels (T, S).

    Returns:
        (T, Q, way); exponentiated, each row sums to 1.
    """
    from metactl.nn.metric import cosine_similarities, logsumexp_per_class

    log_attention = cosine_similarities(queries, support.features).log_softmax(-1)
    return logsumexp_per_class(log_attention, support.labels, support.way)


class MatchingNetworks(Algorithm):
    """Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016), "Matching Networks for One
    Shot Learning", NeurIPS.

    A query's label distribution is a weighted sum of the support labels,
    P(y | x, S) = sum_i a(x, x_i) y_i, where the attention a is a softmax over the cosine
    similarities between the query's embedding f(x) and each support embedding g(x_i). Training
    minimises the query negative log-likelihood, log P being the log of the attention summed per
    class. f and g are the same Conv-4 network; ``fce`` adds the full-context embeddings (a
    bidirectional LSTM over the support set for g, an attention LSTM with ``fce_steps`` reads for
    f), which the paper uses on mini-ImageNet but not on Omniglot. No inner loop: the task state
    is the embedded support set.
    """

    name = "matching"
    family = "metric"
    batch_norm_spans_tasks = True  # one forward pass embeds every task of a meta-batch
    summary = "attention over the support set: softmax of cosine similarities, summed per class"
    paper = ("Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016). Matching Networks for "
             "One Shot Learning. NeurIPS.")
    defaults = {
        # The paper gives no optimiser settings; these are Prototypical Networks'.
        "*": {"backbone": "conv4", "hidden": 64, "fce": False, "fce_steps": 5,
              "optimizer": "adam", "lr": 1e-3, "lr_decay": 0.5, "lr_decay_every": 2000},
        "omniglot": {"episodes": 20000},
    }
    hyperparameter_help = {
        "backbone": "embedding network f' = g' (conv4)",
        "hidden": "channels of each conv block",
        "fce": "full-context embeddings: BiLSTM over the support set, attention LSTM for queries",
        "fce_steps": "K, the attention LSTM's processing steps (the paper does not state it)",
    }
    device = DeviceSettings()

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.backbones import build_backbone, feature_size
        from metactl.nn.matching import MatchingNetwork

        encoder = build_backbone(self.hparams["backbone"], spec.channels,
                                 int(self.hparams["hidden"]))
        features = feature_size(encoder, spec.channels, spec.height, spec.width)
        return MatchingNetwork(encoder, features, fce=bool(self.hparams["fce"]),
                               steps=int(self.hparams["fce_steps"]))

    def task_state(self, model: nn.Module, support: LabelledImages) -> EmbeddedSupport:
        """g(x_i, S) for the support set, (T, S, dim)."""
        from metactl.nn.metric import EmbeddedSupport

        return EmbeddedSupport(model.embed_support(support.images), support.labels, support.way)

    def logits(self, model: nn.Module, state: EmbeddedSupport, query_images: Tensor) -> Tensor:
        """log P(y | x, S), (T, Q, way); the default loss is then the paper's NLL and the
        default ``predict`` (a softmax) returns P itself."""
        return class_log_probabilities(model.embed_queries(query_images, state.features), state)


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(MatchingNetworks)
