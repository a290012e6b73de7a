"""Reptile as a metactl plugin."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

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
from metactl.engine.launch import process_place
from metactl.errors import UsageError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.data.episodes import TaskBatch
    from metactl.plugins import AlgorithmRegistry


class Reptile(Algorithm):
    """Nichol, Achiam & Schulman (2018), "On First-Order Meta-Learning Algorithms", arXiv
    1803.02999.

    Trains a copy of the initialisation theta on each task for ``inner_steps`` steps of Adam
    (beta1 = 0) or SGD on mini-batches of ``inner_batch_size`` support images, giving phi, then
    moves theta towards the adapted weights: theta <- theta + epsilon * (mean_i phi_i - theta)
    (the batched version, ``reptile_batched: true``), or task after task,
    theta <- theta + epsilon * (phi_i - theta), each task starting from the previous result
    (the serial version). No second derivatives; the query set is not needed in training.

    The update is left for the engine's outer optimizer: :meth:`meta_gradient` writes
    ``factor * (theta - mean_i phi_i)`` into ``.grad`` and the default plain SGD (``lr`` 1.0,
    no momentum) takes the step, so epsilon = ``lr * factor``. ``factor`` anneals epsilon
    linearly from ``lr`` to ``lr_final`` over training, as in the paper. With Adam as the outer
    optimizer (``--set optimizer=adam``) the same vector serves as a gradient.

    Batch norm uses the statistics of the current batch (transductive evaluation, the paper's
    main setting). Adam's moments and step count carry over from task to task, as in the
    authors' code, where one optimizer serves every task (``keep_inner_state``; false starts
    each task afresh); the model holds them, so checkpoints and evaluation carry them too.

    Shapes: support images (T, way * shot, C, H, W), queries (T, Q, C, H, W), logits (T, Q, way);
    the task state is the adapted parameters, name -> (T, *shape).
    """

    name = "reptile"
    family = "optimization"
    summary = "train on each task, then move the initialisation towards the trained weights"
    paper = ("Nichol, Achiam & Schulman (2018). On First-Order Meta-Learning Algorithms. "
             "arXiv:1803.02999.")
    # Table 1 (transductive rows): one model per setting, with the defaults for that setting
    # (the authors' run_omniglot.py commands).
    paper_protocols = {f"omniglot-{way}w{shot}s": {"dataset": "omniglot", "way": way,
                                                   "shot": shot, "val_every": 5000}
                       for way in (5, 20) for shot in (1, 5)}
    paper_results = tuple(
        PaperResult("omniglot", way, shot, accuracy, f"omniglot-{way}w{shot}s", ci95=ci95,
                    source="Table 1", tolerance=1.0, note="Reptile's figures here are the "
                    "paper's transductive ones; metactl evaluates Reptile transductively")
        for way, shot, accuracy, ci95 in ((5, 1, 97.68, 0.04), (5, 5, 99.48, 0.06),
                                          (20, 1, 89.43, 0.14), (20, 5, 97.12, 0.32)))
    defaults = {
        # The paper's mini-ImageNet settings: 32 filters with max-pooling, 8 Adam steps of 0.001
        # on batches of 10 from 15 shots per class, 50 steps on batches of 5 at test time,
        # meta-batch 5, outer step 1 annealed to 0, 100000 iterations.
        "*": {"hidden": 32, "downsample": "max-pool", "inner_optimizer": "adam",
              "inner_lr": 1e-3, "inner_steps": 8, "inner_batch_size": 10,
              "test_inner_steps": 50, "test_inner_batch_size": 5, "keep_inner_state": True,
              "reptile_batched": True,
              "batch_tasks": True, "lr_final": 0.0, "optimizer": "sgd", "lr": 1.0,
              "momentum": 0.0, "meta_batch": 5, "episodes": 500_000, "train_shot": 15,
              "train_query": 0},
        # Omniglot: 64 filters, stride-2 convolutions; 5 inner steps, 10 shots per class.
        "omniglot": {"hidden": 64, "downsample": "stride", "inner_steps": 5, "train_shot": 10},
        # mini-ImageNet: the "*" settings, 1-shot and 5-shot alike.
        "mini-imagenet": {"train_shot": 15, "episodes": 500_000},
        # 20-way: 10 steps of 0.0005 on batches of 20, test batches of 10, 200000 iterations.
        "omniglot/20-way": {"inner_steps": 10, "inner_batch_size": 20, "inner_lr": 5e-4,
                            "test_inner_batch_size": 10, "episodes": 1_000_000},
    }
    hyperparameter_help = {
        "hidden": "channels of each conv block",
        "downsample": "max-pool (2x2 max-pooling) or stride (stride-2 convolutions)",
        "inner_optimizer": "adam (beta1 = 0, as in the paper) or sgd",
        "inner_lr": "learning rate of the inner optimizer",
        "inner_steps": "inner steps per task in training",
        "inner_batch_size": "support images per inner step in training (0: all)",
        "test_inner_steps": "inner steps at validation and test time",
        "test_inner_batch_size": "support images per inner step at test time (0: all)",
        "keep_inner_state": "carry the inner Adam's moments from task to task, as the authors' "
                            "code does (false: fresh for every task)",
        "reptile_batched": "average the meta-batch's adapted weights (true) or apply each task "
                           "in turn (false, the serial version; needs plain SGD)",
        "batch_tasks": "adapt the tasks of a batch in one vmapped forward (false: a loop)",
        "lr_final": "outer step size reached at the end of training (annealed linearly from lr)",
    }
    # Per-task weights under vmap lose the channels-last layout.
    device = DeviceSettings(compile=False, channels_last=False)
    adapts_with_gradients = True
    test_steps_setting = "test_inner_steps"
    trains_without_queries = True  # the meta-update only needs the adapted weights

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__(hparams)
        from metactl.nn.inner_loops import ReptileSteps

        hparams = self.hparams
        self.inner_loop = ReptileSteps(
            steps=int(hparams["inner_steps"]), lr=float(hparams["inner_lr"]),
            optimizer=hparams["inner_optimizer"], batch_size=int(hparams["inner_batch_size"]),
            test_steps=int(hparams["test_inner_steps"]),
            test_batch_size=int(hparams["test_inner_batch_size"]),
            keep_state=self.keeps_inner_state)
        if not hparams["reptile_batched"] and (
                hparams["optimizer"] != "sgd" or float(hparams["momentum"]) != 0
                or float(hparams["weight_decay"]) != 0 or int(hparams["lr_decay_every"]) != 0):
            raise UsageError("serial Reptile (reptile_batched: false) needs plain SGD as the "
                             "outer optimizer", "--set optimizer=sgd --set momentum=0 "
                             "--set weight_decay=0 --set lr_decay_every=0, or keep "
                             "reptile_batched: true")
        if not hparams["reptile_batched"] and process_place().is_distributed:
            raise UsageError("serial Reptile (reptile_batched: false) applies the tasks one "
                             "after another, which processes cannot share",
                             "keep reptile_batched: true under torchrun: the processes then "
                             "average their tasks' weights (docs/distributed.md)")
        self.steps_taken = 0

    @property
    def keeps_inner_state(self) -> bool:
        # Runs trained before the setting existed started every task afresh.
        return (bool(self.hparams.get("keep_inner_state", False))
                and self.hparams["inner_optimizer"] == "adam")

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.inner_loops import attach_inner_state
        from metactl.nn.learners import ConvLearner

        model = ConvLearner(spec.channels, spec.way, (spec.height, spec.width),
                            hidden=int(self.hparams["hidden"]),
                            downsample=self.hparams["downsample"])
        return attach_inner_state(model) if self.keeps_inner_state else model

    def logits(self, model: nn.Module, state: dict[str, Tensor], query_images: Tensor
               ) -> Tensor:
        """Class scores (T, Q, way) with the adapted parameters (name -> (T, *shape))."""
        from metactl.nn.functional import task_forward

        return task_forward(model, state, query_images, batched=bool(self.hparams["batch_tasks"]))

    def predict(self, model: nn.Module, support: LabelledImages, query_images: Tensor
                ) -> Tensor:
        from metactl.nn.learners import class_probabilities

        return class_probabilities(self.logits(model, self.adapt(model, support), query_images),
                                   support.way)

    def training_fraction(self) -> float:
        """The fraction of training done before this step, in [0, 1].

        Taken from ``self.progress`` when the engine sets it; otherwise counted here, which
        restarts at 0 when a run is resumed.
        """
        progress = getattr(self, "progress", None)
        if progress is not None:
            return float(getattr(progress, "fraction", progress))
        total = math.ceil(int(self.hparams["episodes"]) / int(self.hparams["meta_batch"]))
        return min(self.steps_taken / max(total, 1), 1.0)

    def annealing_factor(self) -> float:
        """epsilon / lr for this step: 1 at the start, ``lr_final / lr`` at the end."""
        fraction, lr = self.training_fraction(), float(self.hparams["lr"])
        final = float(self.hparams["lr_final"]) / lr if lr else 0.0
        return (1 - fraction) + fraction * final

    def meta_gradient(self, model: nn.Module, batch: TaskBatch) -> StepResult:
        """Write ``factor * (theta - mean_i phi_i)`` into ``.grad`` (batched version), or the
        equivalent of the serial version's sequence of interpolations; the engine's SGD steps."""
        import torch

        support = support_of(batch)
        factor = self.annealing_factor()
        self.steps_taken += 1
        parameters = dict(model.named_parameters())
        if self.hparams["reptile_batched"]:
            adaptation = self.inner_loop.adaptation(self, model, support)
            with torch.no_grad():
                for name, parameter in parameters.items():
                    target = adaptation.parameters[name].mean(0)
                    parameter.grad = factor * (parameter - target)
            losses = adaptation.losses
            adapted = adaptation.parameters
        else:
            losses, adapted = self._serial_update(model, support, factor)
        result = StepResult(losses[-1].mean() if len(losses) else torch.zeros(()),
                            extra={"step_size": factor * float(self.hparams["lr"])})
        if batch.query_images.shape[1] > 0:
            from metactl.nn.functional import task_accuracy, task_cross_entropy

            with torch.no_grad():
                scores = self.logits(model, adapted, batch.query_images)
                result.loss = task_cross_entropy(scores, batch.query_labels).mean()
                result.accuracy = float(task_accuracy(scores, batch.query_labels).mean())
        return result

    def _serial_update(self, model: nn.Module, support: LabelledImages, factor: float):
        """Apply the tasks one after another; leave in ``.grad`` the vector that makes the
        engine's SGD step (learning rate lr) land on the result."""
        import torch

        lr = float(self.hparams["lr"])
        epsilon = factor * lr
        parameters = dict(model.named_parameters())
        initial = {name: value.detach().clone() for name, value in parameters.items()}
        losses, adapted = [], {}
        for task in range(support.tasks):
            one = LabelledImages(support.images[task:task + 1], support.labels[task:task + 1],
                                 support.way)
            adaptation = self.inner_loop.adaptation(self, model, one)
            losses.append(adaptation.losses)
            with torch.no_grad():
                for name, parameter in parameters.items():
                    parameter.lerp_(adaptation.parameters[name][0], epsilon)
            for name, value in adaptation.parameters.items():
                adapted.setdefault(name, []).append(value)
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.grad = (initial[name] - parameter) / lr if lr else torch.zeros_like(
                    parameter)
                parameter.copy_(initial[name])
        return (torch.cat(losses, dim=1),
                {name: torch.cat(values) for name, values in adapted.items()})


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(Reptile)
