"""Meta-Learner LSTM as a metactl plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metactl import hookimpl
from metactl.algorithm import (
    Algorithm,
    DeviceSettings,
    LabelledImages,
    ModelSpec,
    PaperResult,
)
from metactl.errors import UsageError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.nn.inner_loops import LearnerState
    from metactl.plugins import AlgorithmRegistry


EVAL_BATCH_NORM = ("running", "batch")


class MetaLearnerLSTM(Algorithm):
    """Ravi & Larochelle (2017), "Optimization as a Model for Few-Shot Learning", ICLR.

    A learner (Conv-4 with 32 filters, max-pooling and a linear classifier) is trained on each
    task's support set by a learned optimizer: a two-layer LSTM applied to every parameter
    coordinate with shared weights, whose cell state *is* the learner's parameters. Its input
    gate plays the learning rate and its forget gate a weight decay, both computed from the
    preprocessed gradient and loss, the current parameter value and the previous gate value;
    the initial cell state is the learner's learned initialisation. One update per mini-batch
    of ``inner_batch_size`` support images, for ``inner_epochs`` passes
    (:class:`metactl.nn.inner_loops.LSTMUpdate`, :class:`metactl.nn.meta_lstm.MetaLSTM`).

    The meta-learner (LSTM weights and initialisation) is trained on the query loss through the
    unrolled updates, with the learner's gradients and losses fed in as detached inputs (the
    paper's truncation: no second derivatives), Adam and gradient-norm clipping at 0.25.

    Batch norm of the learner, as in the paper's code: batch statistics while adapting, with
    running averages collected per task (reset for each task); the query pass uses batch
    statistics during meta-training and those running averages at validation and test time, so
    evaluation is not transductive. ``eval_batch_norm=batch`` normalises the query pass with the
    query batch's statistics instead (transductive, as MAML evaluates).

    Shapes: support images (T, way * shot, C, H, W), queries (T, Q, C, H, W), logits (T, Q, way);
    the task state is a :class:`~metactl.nn.inner_loops.LearnerState` (parameters and running
    statistics, name -> (T, *shape)).
    """

    name = "meta-lstm"
    family = "optimization"
    summary = "an LSTM, trained across tasks, is the optimizer of a small classifier"
    paper = ("Ravi & Larochelle (2017). Optimization as a Model for Few-Shot Learning. ICLR.")
    # The paper reports mini-ImageNet only (Table 1), one model per shot.
    paper_protocols = {f"mini-imagenet-5w{shot}s": {"dataset": "mini-imagenet", "way": 5,
                                                    "shot": shot}
                       for shot in (1, 5)}
    paper_results = tuple(
        PaperResult("mini-imagenet", 5, shot, accuracy, f"mini-imagenet-5w{shot}s", ci95=ci95,
                    source="Table 1", tolerance=1.0)
        for shot, accuracy, ci95 in ((1, 43.44, 0.77), (5, 60.60, 0.71)))
    defaults = {
        # The authors' mini-ImageNet 5-shot settings: 5 passes in batches of 5, 75000 episodes
        # one at a time, Adam 0.001, gradient norm clipped at 0.25 (1-shot: 12 passes).
        "*": {"hidden": 32, "downsample": "max-pool", "lstm_hidden": 20, "inner_epochs": 5,
              "inner_batch_size": 5, "bn_momentum": 0.9, "bn_eps": 1e-3, "batch_tasks": True,
              "eval_batch_norm": "running",
              "optimizer": "adam", "lr": 1e-3, "grad_clip": 0.25, "meta_batch": 1,
              "episodes": 75_000},
        # mini-ImageNet: 15 queries per class (the authors' nEvalExamples); 1-shot: 12 passes.
        "mini-imagenet": {"train_query": 15},
        "mini-imagenet/1-shot": {"inner_epochs": 12},
        # The authors' Omniglot configurations (the paper reports mini-ImageNet only).
        "omniglot": {"episodes": 50_000},
        "omniglot/1-shot": {"inner_epochs": 15},
        "omniglot/20-way": {"inner_batch_size": 20, "episodes": 40_000},
        "omniglot/20-way/1-shot": {"inner_epochs": 20},
    }
    hyperparameter_help = {
        "hidden": "channels of each conv block of the learner",
        "downsample": "max-pool (2x2 max-pooling) or stride (stride-2 convolutions)",
        "lstm_hidden": "units of the meta-learner's first LSTM layer",
        "inner_epochs": "passes of the learned optimizer over the support set",
        "inner_batch_size": "support images per update (0: all)",
        "bn_momentum": "momentum of the learner's per-task batch-norm running averages",
        "bn_eps": "epsilon of the learner's batch norm",
        "batch_tasks": "adapt the tasks of a batch in one vmapped forward (false: a loop)",
        "eval_batch_norm": "batch norm of the query pass at validation and test time: running "
                           "(the averages collected while adapting, as in the authors' code) or "
                           "batch (the query batch's statistics: transductive)",
    }
    # float32: the LSTM's cell state is the learner's weights, updated in small steps; per-task
    # weights under vmap lose the channels-last layout.
    device = DeviceSettings(compile=False, mixed_precision=None, channels_last=False)
    adapts_with_gradients = True

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__(hparams)
        from metactl.nn.inner_loops import LSTMUpdate

        self.hparams.setdefault("eval_batch_norm", "running")  # runs saved before the option
        if self.hparams["eval_batch_norm"] not in EVAL_BATCH_NORM:
            raise UsageError(f"unknown eval_batch_norm {self.hparams['eval_batch_norm']!r}",
                             f"use one of {', '.join(EVAL_BATCH_NORM)}")

        self.inner_loop = LSTMUpdate(epochs=int(self.hparams["inner_epochs"]),
                                     batch_size=int(self.hparams["inner_batch_size"]))

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.learners import ConvLearner
        from metactl.nn.meta_lstm import LearnerWithMetaLSTM

        learner = ConvLearner(spec.channels, spec.way, (spec.height, spec.width),
                              hidden=int(self.hparams["hidden"]),
                              downsample=self.hparams["downsample"], running_stats=True,
                              bn_eps=float(self.hparams["bn_eps"]),
                              bn_momentum=float(self.hparams["bn_momentum"]))
        return LearnerWithMetaLSTM(learner, hidden=int(self.hparams["lstm_hidden"]))

    def logits(self, model: nn.Module, state: LearnerState, query_images: Tensor) -> Tensor:
        """Class scores (T, Q, way) of the learner with the task state's parameters. Batch norm
        follows the learner's mode: batch statistics in training mode, else the task's running
        averages (or the batch's statistics with ``eval_batch_norm=batch``)."""
        from metactl.nn.functional import task_forward, training_mode

        batch_statistics = model.learner.training or self.hparams["eval_batch_norm"] == "batch"
        with training_mode(model.learner, batch_statistics):
            return task_forward(model.learner, state.parameters, query_images, state.buffers,
                                batched=bool(self.hparams["batch_tasks"]))

    def predict(self, model: nn.Module, support: LabelledImages, query_images: Tensor
                ) -> Tensor:
        from metactl.nn.learners import class_probabilities

        return class_probabilities(self.logits(model, self.adapt(model, support), query_images),
                                   support.way)


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(MetaLearnerLSTM)
