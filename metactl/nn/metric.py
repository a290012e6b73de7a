"""Per-class aggregation and similarity helpers shared by the metric-based algorithms.

Shapes: ``T`` tasks, ``S`` support images, ``Q`` queries, ``way`` classes per task. Every helper
works on a batch of tasks at once and on unbalanced support sets (any number of images per
class), which ``metactl predict`` hands over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor


@dataclass(frozen=True)
class EmbeddedSupport:
    """The task state of most metric methods: the embedded support set.

    Attributes:
        features: (T, S, *feature_shape), one embedding (or feature map) per support image.
        labels: int64, (T, S), values in [0, way).
        way: classes per task.
    """

    features: Tensor
    labels: Tensor
    way: int


def one_hot_labels(labels: Tensor, way: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(T, S) int64 labels in [0, way) -> (T, S, way) one-hot of ``dtype``."""
    return functional.one_hot(labels, way).to(dtype)


def class_sums(features: Tensor, labels: Tensor, way: int) -> Tensor:
    """Sum the features of each class's support images.

    Args:
        features: (T, S, *feature_shape), e.g. (T, S, dim) or (T, S, C, H, W) feature maps.
        labels: int64, (T, S), values in [0, way).

    Returns:
        (T, way, *feature_shape).
    """
    tasks, count = features.shape[:2]
    one_hot = one_hot_labels(labels, way, features.dtype)  # (T, S, way)
    sums = one_hot.transpose(1, 2) @ features.reshape(tasks, count, -1)
    return sums.view(tasks, way, *features.shape[2:])


def class_means(features: Tensor, labels: Tensor, way: int) -> Tensor:
    """Mean feature of each class's support images (prototypes); unbalanced sets work.

    Args:
        features: (T, S, *feature_shape).
        labels: int64, (T, S), values in [0, way).

    Returns:
        (T, way, *feature_shape); a class with no support image gets zeros.
    """
    counts = one_hot_labels(labels, way, features.dtype).sum(1).clamp_min(1)  # (T, way)
    sums = class_sums(features, labels, way)
    return sums / counts.view(*counts.shape, *([1] * (features.dim() - 2)))


def cosine_similarities(queries: Tensor, supports: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every query with every support embedding.

    Args:
        queries: (T, Q, dim).
        supports: (T, S, dim).

    Returns:
        (T, Q, S), values in [-1, 1].
    """
    queries = queries / queries.norm(dim=-1, keepdim=True).clamp_min(eps)
    supports = supports / supports.norm(dim=-1, keepdim=True).clamp_min(eps)
    return queries @ supports.transpose(1, 2)


def mean_per_class(scores: Tensor, labels: Tensor, way: int) -> Tensor:
    """Average query-support scores over each class's support images.

    Args:
        scores: (T, Q, S).
        labels: int64, (T, S), values in [0, way).

    Returns:
        (T, Q, way); a class with no support image scores 0.
    """
    one_hot = one_hot_labels(labels, way, scores.dtype)  # (T, S, way)
    return (scores @ one_hot) / one_hot.sum(1, keepdim=True).clamp_min(1)


def _by_class(values: Tensor, labels: Tensor, way: int) -> Tensor:
    """(T, Q, S) -> (T, Q, way, S), with ``-inf`` where a support image is not of the class."""
    mask = one_hot_labels(labels, way, torch.bool).transpose(1, 2).unsqueeze(1)  # (T, 1, way, S)
    return values.unsqueeze(2).masked_fill(~mask, float("-inf"))


def max_per_class(scores: Tensor, labels: Tensor, way: int) -> Tensor:
    """The best query-support score within each class (nearest neighbour per class).

    Args:
        scores: (T, Q, S).
        labels: int64, (T, S), values in [0, way).

    Returns:
        (T, Q, way); a class with no support image scores ``-inf``.
    """
    return _by_class(scores, labels, way).amax(-1)


def logsumexp_per_class(log_weights: Tensor, labels: Tensor, way: int) -> Tensor:
    """``log(sum(exp(log_weights)))`` over each class's support images, computed stably.

    With ``log_weights`` the log of attention weights that sum to one over the support set, the
    result is the log of the probability mass per class (Matching Networks' output).

    Args:
        log_weights: (T, Q, S).
        labels: int64, (T, S), values in [0, way).

    Returns:
        (T, Q, way); a class with no support image gets ``-inf``.
    """
    return _by_class(log_weights, labels, way).logsumexp(-1)
