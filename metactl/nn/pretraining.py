"""Supervised pre-training on the training classes, and task-time classifier heads.

The baselines of Vinyals et al. (2016) train an ordinary classifier over *all* training classes
and only then face few-shot tasks (by nearest neighbour in its feature space, or by fitting a
new softmax layer on each support set). metactl's engine draws batches of tasks; a batch of
tasks is also a supervised batch, because ``TaskBatch.classes[task, label]`` is the training
class behind every task-local label. :class:`SupervisedPretraining` turns that into the usual
cross-entropy over ``ModelSpec.num_train_classes`` outputs, so the engine's loop, optimizer,
validation and checkpoints serve pre-training unchanged.

This module imports torch only inside its functions: plugin entry modules import it at the top,
and ``metactl --help`` must not pay for torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metactl.algorithm import Algorithm, ModelSpec, StepResult
from metactl.errors import UsageError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.data.episodes import TaskBatch

PRETRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {"backbone": "conv4", "hidden": 64, "dropblock": 0.0, "optimizer": "adam", "lr": 1e-3,
          "lr_decay": 0.5, "lr_decay_every": 2000},
    # Supervised batches of 60 classes x 6 images, the size of Prototypical Networks' episodes.
    # 2,000 of them are 7.5 passes over the 4,112 training classes x 20 images (8.8 over
    # train+val); the loss leaves ln 4112 after about 300 and validation 1-NN accuracy passes
    # 95% by 1,000 (see docs/algorithms/nearest-neighbor.md).
    "omniglot": {"train_way": 60, "train_query": 5, "episodes": 2000, "lr_decay_every": 1000},
    # mini-ImageNet as Chen et al. (2019) train their Baseline: batches of 16 images, 400
    # epochs of the 38,400 training images, with standard augmentation.
    "mini-imagenet": {"train_way": 16, "train_shot": 1, "train_query": 0, "augment": True,
                      "episodes": 960_000},
}
PRETRAINING_HELP = {
    "backbone": "feature extractor trained as a classifier: conv4, resnet12 (hidden x 1, 2.5, 5, "
                "10 channels) or one a plugin registered",
    "hidden": "channels of each conv block",
    "dropblock": "DropBlock rate in resnet12's last two blocks (0: off)",
}


def build_classifier(backbone: nn.Module, spec: ModelSpec) -> nn.Sequential:
    """``backbone`` followed by a linear layer over every training class.

    The result maps (N, C, H, W) images to (N, num_train_classes) logits; ``.backbone`` maps
    them to (N, features) and ``.head`` is the pre-training layer.
    """
    from collections import OrderedDict

    from torch import nn

    from metactl.nn.backbones import feature_size

    if spec.num_train_classes < 1:
        raise UsageError("supervised pre-training needs the number of training classes, and "
                         "the model spec gives none",
                         "build the model with ModelSpec(..., num_train_classes=N)")
    features = feature_size(backbone, spec.channels, spec.height, spec.width)
    return nn.Sequential(OrderedDict(backbone=backbone,
                                     head=nn.Linear(features, spec.num_train_classes)))


def global_labels(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Training-class labels of the support and query images, (T, way * shot) and
    (T, way * query), values in [0, num_train_classes)."""
    return (batch.classes.gather(1, batch.support_labels),
            batch.classes.gather(1, batch.query_labels))


def supervised_loss(model: nn.Module, batch: TaskBatch) -> StepResult:
    """Cross-entropy over all training classes on every image of the batch of tasks.

    Args:
        model: a :func:`build_classifier` network.
        batch: support and query images, (T, N, C, H, W), with ``classes`` (T, way).

    Returns:
        the mean loss and the classification accuracy over the (T * N) images.
    """
    import torch
    import torch.nn.functional as functional

    support_classes, query_classes = global_labels(batch)
    images = torch.cat([batch.support_images, batch.query_images], dim=1).flatten(0, 1)
    targets = torch.cat([support_classes, query_classes], dim=1).flatten()
    logits = model(images)
    loss = functional.cross_entropy(logits, targets)
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return StepResult(loss, accuracy)


class SupervisedPretraining(Algorithm):
    """Base class of the baselines: a backbone pre-trained as an ordinary classifier over all
    training classes. Subclasses decide how the pre-trained features solve a few-shot task
    (:meth:`task_state` and :meth:`logits`), and see the backbone as ``model.backbone``.
    """

    family = "baseline"
    batch_norm_spans_tasks = True  # pre-training classifies every task's images together
    trains_without_queries = True  # the classifier's loss is on every image, support included
    defaults = PRETRAINING_DEFAULTS
    hyperparameter_help = PRETRAINING_HELP

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.backbones import build_backbone

        backbone = build_backbone(self.hparams["backbone"], spec.channels,
                                  int(self.hparams["hidden"]), self.hparams)
        return build_classifier(backbone, spec)

    def loss(self, model: nn.Module, batch: TaskBatch) -> StepResult:
        return supervised_loss(model, batch)


@contextlib.contextmanager
def _frozen_statistics(module: nn.Module) -> Iterator[None]:
    """Evaluation mode (batch norm uses its running statistics) for the duration."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@dataclass
class FineTunedHeads:
    """One linear classifier per task, and per-task backbone parameters if those were tuned.

    Attributes:
        weight: (T, way, features).
        bias: (T, way).
        parameters: name -> (T, *shape) per-task backbone parameters, or ``None`` when the
            backbone stayed frozen.
        buffers: name -> (T, *shape) backbone buffers matching ``parameters``, or ``None``.
    """

    weight: Tensor
    bias: Tensor
    parameters: dict[str, Tensor] | None = None
    buffers: dict[str, Tensor] | None = None


def _per_task_features(backbone: nn.Module, parameters: dict[str, Tensor],
                       buffers: dict[str, Tensor], images: Tensor) -> Tensor:
    """(T, N, C, H, W) -> (T, N, features) with each task's own backbone parameters."""
    from torch.func import functional_call, vmap

    def embed(task_parameters, task_buffers, task_images):
        return functional_call(backbone, (task_parameters, task_buffers), (task_images,))

    return vmap(embed)(parameters, buffers, images)


def finetune_heads(backbone: nn.Module, support_images: Tensor, support_labels: Tensor,
                   way: int, steps: int, lr: float, whole_network: bool = False
                   ) -> FineTunedHeads:
    """Fit a new linear classifier on each task's support set (Vinyals et al.'s "softmax
    fine-tuning" baseline), all tasks at once.

    The heads start at zero and take ``steps`` full-batch Adam steps on the support
    cross-entropy. With ``whole_network``, every task also gets its own copy of the backbone,
    tuned jointly with its head (batched with ``torch.func.vmap``); batch norm keeps its
    pre-trained running statistics. Runs with gradients enabled and in float32 whatever the
    caller's context.

    Args:
        backbone: maps (N, C, H, W) to (N, features).
        support_images: float, (T, S, C, H, W).
        support_labels: int64, (T, S), values in [0, way).

    Returns:
        :class:`FineTunedHeads` with (T, way, features) weights.
    """
    import torch
    import torch.nn.functional as functional

    from metactl.nn.backbones import embed_tasks, feature_size

    tasks, count = support_labels.shape
    device = support_images.device
    with torch.enable_grad(), torch.autocast(device.type, enabled=False), \
            _frozen_statistics(backbone):
        support_images = support_images.float()
        parameters = buffers = None
        if whole_network:
            parameters = {name: value.detach().unsqueeze(0).repeat(tasks, *[1] * value.dim())
                          .requires_grad_() for name, value in backbone.named_parameters()}
            buffers = {name: value.unsqueeze(0).expand(tasks, *value.shape)
                       for name, value in backbone.named_buffers()}
            frozen = None
        else:
            with torch.no_grad():
                frozen = embed_tasks(backbone, support_images).float()
        features = (frozen.shape[-1] if frozen is not None else
                    feature_size(backbone, *support_images.shape[2:]))
        weight = torch.zeros(tasks, way, features, device=device, requires_grad=True)
        bias = torch.zeros(tasks, way, device=device, requires_grad=True)
        trained = [weight, bias, *(parameters.values() if parameters else ())]
        optimizer = torch.optim.Adam(trained, lr=lr)
        targets = support_labels.flatten()
        for _ in range(steps):
            embedded = (frozen if frozen is not None else
                        _per_task_features(backbone, parameters, buffers, support_images))
            logits = embedded @ weight.transpose(1, 2) + bias.unsqueeze(1)  # (T, S, way)
            # The sum over tasks of each task's mean loss: tasks do not share parameters.
            loss = functional.cross_entropy(logits.flatten(0, 1), targets, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            (loss / count).backward()
            optimizer.step()
    detached = ({name: value.detach() for name, value in parameters.items()}
                if parameters else None)
    return FineTunedHeads(weight.detach(), bias.detach(), detached, buffers)


def finetuned_logits(backbone: nn.Module, heads: FineTunedHeads, images: Tensor) -> Tensor:
    """Scores of each task's images under its fine-tuned head.

    Args:
        images: float, (T, N, C, H, W).

    Returns:
        float, (T, N, way).
    """
    import torch

    from metactl.nn.backbones import embed_tasks

    with torch.no_grad(), torch.autocast(images.device.type, enabled=False), \
            _frozen_statistics(backbone):
        if heads.parameters is None:
            features = embed_tasks(backbone, images.float())
        else:
            features = _per_task_features(backbone, heads.parameters, heads.buffers,
                                          images.float())
    return features.float() @ heads.weight.transpose(1, 2) + heads.bias.unsqueeze(1)
