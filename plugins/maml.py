"""MAML and first-order MAML as metactl plugins."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from metactl import hookimpl
from metactl.algorithm import Algorithm, DeviceSettings, LabelledImages, ModelSpec, PaperResult

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.plugins import AlgorithmRegistry

PAPER = ("Finn, Abbeel & Levine (2017). Model-Agnostic Meta-Learning for Fast Adaptation of "
         "Deep Networks. ICML.")


TRANSDUCTIVE = ("evaluated transductively (batch norm on the query batch), as in the paper's "
                "code")


def maml_table(omniglot, omniglot_source: str, mini_imagenet) -> tuple[PaperResult, ...]:
    """The paper's rows: Omniglot (way, shot, accuracy, ci95) and mini-ImageNet 5-way (shot,
    accuracy, ci95), whose intervals are wide enough (up to 1.84) to allow 2 points."""
    return (
        *(PaperResult("omniglot", way, shot, accuracy, f"omniglot-{way}w{shot}s", ci95=ci95,
                      source=omniglot_source, note=TRANSDUCTIVE)
          for way, shot, accuracy, ci95 in omniglot),
        *(PaperResult("mini-imagenet", 5, shot, accuracy, f"mini-imagenet-5w{shot}s",
                      ci95=ci95, source="Finn et al. (2017), Table 1", tolerance=2.0,
                      note=TRANSDUCTIVE)
          for shot, accuracy, ci95 in mini_imagenet))


class MAML(Algorithm):
    """Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
    Networks", ICML.

    Learns an initialisation theta of a Conv-4 classifier from which ``inner_steps`` steps of
    gradient descent (step ``inner_lr``) on a task's support set give parameters phi that
    classify its queries well. The meta-objective is the query cross-entropy at phi, averaged
    over the meta-batch, differentiated through the inner steps with their second-order terms.
    At test time the inner loop takes ``test_inner_steps`` steps.

    Tasks of a meta-batch adapt together: per-task parameters (T, *shape), one vmapped forward
    (``batch_tasks: false`` loops over tasks instead; same result), inner gradients from
    ``torch.autograd.grad(create_graph=True)``
    (:class:`metactl.nn.inner_loops.GradientSteps`).

    Batch norm, as in the paper and its code, always uses the statistics of the current batch
    (no running statistics): of the support set while adapting, of the query set in the query
    pass. Evaluation is therefore transductive: each task's queries are classified together.

    Regression tasks (``--dataset sinusoid``) use the paper's regressor, two hidden layers of 40
    ReLU units, and mean squared error in both loops.

    Shapes: support images (T, way * shot, C, H, W), queries (T, Q, C, H, W), logits (T, Q, way);
    for regression, inputs (T, N, features) and predictions (T, N, 1). The task state is the
    adapted parameters, name -> (T, *shape).
    """

    name = "maml"
    family = "optimization"
    summary = "learn an initialisation that a few gradient steps adapt to each task"
    paper = PAPER
    first_order: ClassVar[bool] = False
    # Table 1 of the paper: one model per setting, trained with the defaults for that setting
    # (5-way: meta-batch 32, one step of 0.4; 20-way: meta-batch 16, five steps of 0.1).
    # mini-ImageNet (Table 1, bottom): 5-way with the "*" and mini-imagenet defaults.
    paper_protocols = {
        **{f"omniglot-{way}w{shot}s": {"dataset": "omniglot", "way": way, "shot": shot,
                                       "val_every": 2000}
           for way in (5, 20) for shot in (1, 5)},
        **{f"mini-imagenet-5w{shot}s": {"dataset": "mini-imagenet", "way": 5, "shot": shot,
                                        "val_every": 2000}
           for shot in (1, 5)},
    }
    paper_results = maml_table(
        omniglot=((5, 1, 98.7, 0.4), (5, 5, 99.9, 0.1), (20, 1, 95.8, 0.3), (20, 5, 98.9, 0.2)),
        omniglot_source="Table 1",
        mini_imagenet=((1, 48.70, 1.84), (5, 63.11, 0.92)))
    defaults = {
        # The paper's mini-ImageNet settings: 32 filters, max-pooling, 5 steps of 0.01 (10 at
        # test time), 15 queries per class, meta-batch 4, 60000 iterations.
        "*": {"hidden": 32, "downsample": "max-pool", "inner_steps": 5, "test_inner_steps": 10,
              "inner_lr": 0.01, "batch_tasks": True, "optimizer": "adam", "lr": 1e-3,
              "meta_batch": 4, "episodes": 240_000},
        # Omniglot: 64 filters, strided convolutions instead of max-pooling; 5-way: one step of
        # 0.4 (three at test time), meta-batch 32; 60000 iterations. The reference code trains
        # with as many queries per class as shots.
        "omniglot": {"hidden": 64, "downsample": "stride", "inner_steps": 1,
                     "test_inner_steps": 3, "inner_lr": 0.4, "meta_batch": 32,
                     "episodes": 1_920_000},
        "omniglot/1-shot": {"train_query": 1},
        "omniglot/5-shot": {"train_query": 5},
        # 20-way: five steps of 0.1 in training and test, meta-batch 16.
        "omniglot/20-way": {"inner_steps": 5, "test_inner_steps": 5, "inner_lr": 0.1,
                            "meta_batch": 16, "episodes": 960_000},
        # mini-ImageNet (the "*" settings): 15 queries per class; 5-shot: meta-batch 2.
        "mini-imagenet": {"train_query": 15},
        "mini-imagenet/5-shot": {"meta_batch": 2, "episodes": 120_000},
        # Sinusoid regression: 2 x 40 ReLU units, one step of 0.01 (10 at test time, as in the
        # reference code), meta-batch 25, 70000 iterations.
        "sinusoid": {"hidden": 40, "inner_steps": 1, "test_inner_steps": 10, "inner_lr": 0.01,
                     "meta_batch": 25, "episodes": 1_750_000},
    }
    hyperparameter_help = {
        "hidden": "channels of each conv block (units of each hidden layer for regression)",
        "downsample": "max-pool (2x2 max-pooling) or stride (stride-2 convolutions)",
        "inner_steps": "gradient steps on the support set in training",
        "test_inner_steps": "gradient steps on the support set at validation and test time",
        "inner_lr": "step size of the inner gradient steps (alpha)",
        "batch_tasks": "adapt the tasks of a batch in one vmapped forward (false: a loop)",
    }
    # torch.compile does not support the double backward of second-order MAML; CUDA graphs do.
    # Per-task weights under vmap lose the channels-last layout.
    device = DeviceSettings(compile=False, channels_last=False, cuda_graphs=True)
    adapts_with_gradients = True
    tasks = ("classification", "regression")
    test_steps_setting = "test_inner_steps"

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__(hparams)
        from metactl.nn.inner_loops import GradientSteps

        self.inner_loop = GradientSteps(
            steps=int(self.hparams["inner_steps"]), lr=float(self.hparams["inner_lr"]),
            first_order=self.first_order, test_steps=int(self.hparams["test_inner_steps"]))

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.learners import ConvLearner, RegressionMLP

        if spec.is_regression:
            return RegressionMLP(spec.channels, spec.way, hidden=int(self.hparams["hidden"]))
        return ConvLearner(spec.channels, spec.way, (spec.height, spec.width),
                           hidden=int(self.hparams["hidden"]),
                           downsample=self.hparams["downsample"])

    def logits(self, model: nn.Module, state: dict[str, Tensor], query_images: Tensor
               ) -> Tensor:
        """Class scores (T, Q, way) of query images (T, Q, C, H, W) with the adapted parameters
        ``state`` (name -> (T, *shape))."""
        from metactl.nn.functional import task_forward

        return task_forward(model, state, query_images, batched=bool(self.hparams["batch_tasks"]))

    def predict(self, model: nn.Module, support: LabelledImages, query_images: Tensor
                ) -> Tensor:
        """Probabilities (T, Q, way); ``way`` may be below the number of classes trained with.
        For regression, the predictions (T, Q, 1)."""
        from metactl.nn.learners import class_probabilities

        outputs = self.logits(model, self.adapt(model, support), query_images)
        if support.labels.is_floating_point():
            return outputs
        return class_probabilities(outputs, support.way)


class FirstOrderMAML(MAML):
    """First-order MAML (Finn, Abbeel & Levine 2017, section 5.2): MAML with the inner gradients
    treated as constants, so the meta-gradient is the query-loss gradient at the adapted
    parameters. No second derivatives, and memory that does not grow with the inner steps.
    Same model, defaults and shapes as :class:`MAML`.
    """

    name = "fomaml"
    summary = "MAML without second-order terms (first-order approximation)"
    first_order = True
    # Omniglot: "1st-order MAML + Transduction" in Nichol, Achiam & Schulman (2018), Table 2
    # (the MAML paper reports first order on mini-ImageNet only, Table 1).
    paper_results = maml_table(
        omniglot=((5, 1, 98.3, 0.5), (5, 5, 99.2, 0.2), (20, 1, 89.4, 0.5), (20, 5, 97.9, 0.1)),
        omniglot_source="Nichol, Achiam & Schulman (2018), Table 2",
        mini_imagenet=((1, 48.07, 1.75), (5, 63.15, 0.91)))


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(MAML)
    registry.add(FirstOrderMAML)
