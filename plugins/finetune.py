"""The softmax fine-tuning baseline as a metactl plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.algorithm import LabelledImages, PaperResult
from metactl.nn.pretraining import PRETRAINING_DEFAULTS, PRETRAINING_HELP, SupervisedPretraining

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.nn.pretraining import FineTunedHeads
    from metactl.plugins import AlgorithmRegistry


class FineTuningBaseline(SupervisedPretraining):
    """The fine-tuned "baseline classifier" of Vinyals, Blundell, Lillicrap, Kavukcuoglu &
    Wierstra (2016), "Matching Networks for One Shot Learning", NeurIPS.

    Pre-training is that of ``nearest-neighbor``: a Conv-4 classifier over all training
    classes. On each test task the pre-trained linear layer is replaced by a new one with
    ``way`` outputs, initialised at zero and fitted to the support set by ``finetune_steps``
    full-batch Adam steps of cross-entropy on the frozen backbone features (Chen et al. 2019
    call this the "Baseline"). With ``finetune_backbone`` each task also tunes its own copy of
    the backbone. The task state is the fitted heads: (T, way, features) weights.
    """

    name = "finetune"
    summary = "classifier pre-trained on all training classes, new softmax layer per task"
    paper = ("Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016). Matching Networks "
             "for One Shot Learning. NeurIPS (baseline classifier, fine-tuned).")
    # Vinyals et al. (2016), Table 1, "Baseline classifier, softmax, fine-tuned": one classifier
    # trained on the 1,200 train + val characters, tested at every setting.
    paper_protocols = {"omniglot": {"dataset": "omniglot", "train_split": "trainval"}}
    paper_results = tuple(
        PaperResult("omniglot", way, shot, accuracy, "omniglot", source="Table 1")
        for way, shot, accuracy in ((5, 1, 86.0), (5, 5, 97.6), (20, 1, 72.9), (20, 5, 92.3)))
    defaults = {**PRETRAINING_DEFAULTS,
                "*": {**PRETRAINING_DEFAULTS["*"], "finetune_steps": 100, "finetune_lr": 0.01,
                      "finetune_backbone": False}}
    hyperparameter_help = {
        **PRETRAINING_HELP,
        "finetune_steps": "Adam steps fitting the new head on each support set",
        "finetune_lr": "learning rate of those steps",
        "finetune_backbone": "also fine-tune a per-task copy of the backbone (slower)",
    }
    # The heads are fitted by gradient descent at evaluation and prediction time.
    adapts_with_gradients = True

    def task_state(self, model: nn.Module, support: LabelledImages) -> FineTunedHeads:
        """Fit one head per task on the support set; (T, way, features) weights."""
        from metactl.nn.pretraining import finetune_heads

        return finetune_heads(model.backbone, support.images, support.labels, support.way,
                              steps=int(self.hparams["finetune_steps"]),
                              lr=float(self.hparams["finetune_lr"]),
                              whole_network=bool(self.hparams["finetune_backbone"]))

    def logits(self, model: nn.Module, state: FineTunedHeads, query_images: Tensor) -> Tensor:
        """Scores of the fitted heads, (T, Q, way)."""
        from metactl.nn.pretraining import finetuned_logits

        return finetuned_logits(model.backbone, state, query_images)


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(FineTuningBaseline)
