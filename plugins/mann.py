"""Memory-augmented neural networks (MANN) as a metactl plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from metactl import hookimpl
from metactl.algorithm import (
    Algorithm,
    DeviceSettings,
    LabelledImages,
    ModelSpec,
    PaperResult,
    StepResult,
    query_loss,
    support_of,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.data.episodes import TaskBatch
    from metactl.nn.mann import MemoryState
    from metactl.plugins import AlgorithmRegistry

# Support sets come sorted by class; evaluation presents them in an order fixed by this seed.
EVALUATION_ORDER_SEED = 0


@dataclass(frozen=True)
class TaskMemory:
    """The task state of MANN: its state after the support sequence, and the task's way."""

    state: MemoryState
    way: int


def flat(images: Tensor) -> Tensor:
    """(T, S, C, H, W) -> (T, S, C * H * W)."""
    return images.flatten(2)


def presentation_order(labels: Tensor, training: bool) -> Tensor:
    """A random order of each task's examples, (T, S): from the global generator in training,
    from a fixed seed otherwise so that evaluation is reproducible."""
    import torch

    if training:
        keys = torch.rand(labels.shape, device=labels.device)
    else:
        generator = torch.Generator().manual_seed(EVALUATION_ORDER_SEED)
        keys = torch.rand(labels.shape, generator=generator).to(labels.device)
    return keys.argsort(dim=-1)


def key_strength(value: object) -> float | str:
    from metactl.errors import UsageError

    if value == "learned":
        return "learned"
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"key_strength must be a number or 'learned', got {value!r}",
                         "pass e.g. --set key_strength=1 or --set key_strength=learned") from None


class MemoryAugmentedNetworks(Algorithm):
    """Santoro, Bartunov, Botvinick, Wierstra & Lillicrap (2016), "Meta-Learning with
    Memory-Augmented Neural Networks", ICML.

    A controller with an external memory sees a task as a sequence: at each step an image and
    the label of the *previous* image, so it must hold each image in memory until its label
    arrives and bind the two there. Memory is read by content (softmax of cosine similarities)
    and written by least-recently-used access (:mod:`metactl.nn.mann`). Labels are shuffled per
    episode (the sampler's) and the memory is wiped between episodes; the weights are learned
    across episodes by the engine's outer optimizer.

    On the plugin API: ``adapt`` presents the support set as a sequence in random order and
    returns the memory state after it (a :class:`TaskMemory`); ``logits`` answers each query as
    the next step after that state, on its own, so no query sees another. ``loss`` is the
    paper's: the cross-entropy of every step of the support sequence (plus the queries, when
    training tasks have any); by default training uses the paper's episodes, 5 classes with 10
    images each in one sequence of 50, and no queries. ``sequence_logits`` scores a whole
    sequence for ``metactl evaluate --positions``, the paper's accuracy by instance.

    Shapes: support images (T, way * shot, C, H, W), queries (T, Q, C, H, W), logits (T, Q, way).
    """

    name = "mann"
    family = "model"
    summary = "an LSTM controller binds images to labels in an external memory as it reads them"
    paper = ("Santoro, Bartunov, Botvinick, Wierstra & Lillicrap (2016). Meta-Learning with "
             "Memory-Augmented Neural Networks. ICML.")
    # The paper reports accuracy by instance position (`metactl evaluate --positions paper`);
    # Vinyals et al. (2016, Table 1) read its 2nd and 5th-instance accuracies as 5-way 1-shot and
    # 5-shot figures, which is how few-shot tables compare MANN.
    paper_protocols = {"omniglot": {"dataset": "omniglot"}}
    paper_results = (
        PaperResult("omniglot", 5, 1, 82.8, "omniglot", source="Vinyals et al. (2016), Table 1",
                    note="MANN's rows are Santoro et al.'s 2nd and 5th-instance accuracies on "
                    "label-delayed sequences, as Vinyals et al. cite them; metactl evaluates "
                    "MANN on standard episodes"),
        PaperResult("omniglot", 5, 5, 94.9, "omniglot", source="Vinyals et al. (2016), Table 1",
                    note="MANN's rows are Santoro et al.'s 2nd and 5th-instance accuracies on "
                    "label-delayed sequences, as Vinyals et al. cite them; metactl evaluates "
                    "MANN on standard episodes"),
    )
    defaults = {
        # The paper: LSTM controller of 200 units, a 128 x 40 memory, 4 read heads, usage
        # decay 0.95, RMSProp at 1e-4 with momentum 0.9 and decay 0.95, mini-batches of 16
        # episodes, trained for "100,000 episodes": read as 100,000 updates of 16 sequences,
        # as the reference implementations count them (docs/algorithms/mann.md); Omniglot
        # episodes of 5 classes x 10 images in one sequence of 50.
        "*": {"controller": "lstm", "controller_size": 200, "memory_slots": 128,
              "memory_width": 40, "read_heads": 4, "usage_decay": 0.95, "key_strength": 1.0,
              "label_slots": 0, "train_shot": 10, "train_query": 0, "optimizer": "rmsprop",
              "lr": 1e-4, "momentum": 0.9, "rmsprop_alpha": 0.95, "meta_batch": 16,
              "episodes": 16 * 100_000, "val_every": 500},
    }
    hyperparameter_help = {
        "controller": "lstm or feedforward (one ReLU layer)",
        "controller_size": "units of the controller",
        "memory_slots": "rows of the memory matrix",
        "memory_width": "numbers per memory row (the key size)",
        "read_heads": "read heads; each also writes its key, and this many slots count as least "
                      "used",
        "usage_decay": "gamma, the decay of the usage weights per step",
        "key_strength": "multiplies the cosine similarities of content addressing: a number (1: "
                        "the paper) or learned (each head emits it, as in the NTM)",
        "label_slots": "size of the one-hot labels and of the output (0: the training way)",
    }
    # float32: the memory is read by a softmax over cosine similarities, step after step.
    device = DeviceSettings(mixed_precision=None)
    learns_from_sequences = True

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.mann import MemoryAugmentedNetwork

        hparams = self.hparams
        return MemoryAugmentedNetwork(
            spec.channels * spec.height * spec.width,
            int(hparams["label_slots"]) or spec.way, controller=str(hparams["controller"]),
            controller_size=int(hparams["controller_size"]), slots=int(hparams["memory_slots"]),
            width=int(hparams["memory_width"]), heads=int(hparams["read_heads"]),
            usage_decay=float(hparams["usage_decay"]),
            key_strength=key_strength(hparams["key_strength"]))

    def present(self, model: nn.Module, support: LabelledImages
                ) -> tuple[LabelledImages, Tensor, MemoryState]:
        """Show the support set in random order: the sequence shown, its scores (T, S, L) and
        the state after it."""
        sequence = support.reordered(presentation_order(support.labels, model.training))
        scores, state = model.run_sequence(flat(sequence.images), sequence.labels)
        return sequence, scores, state

    def adapt(self, model: nn.Module, support: LabelledImages) -> TaskMemory:
        """Present the support set in random order; the state after it, (T, ...)."""
        _, _, state = self.present(model, support)
        return TaskMemory(state, support.way)

    def logits(self, model: nn.Module, state: TaskMemory, query_images: Tensor) -> Tensor:
        return model.answer(state.state, flat(query_images))[..., :state.way]

    def sequence_logits(self, model: nn.Module, sequence: LabelledImages) -> Tensor:
        scores, _ = model.run_sequence(flat(sequence.images), sequence.labels)
        return scores[..., :sequence.way]

    def loss(self, model: nn.Module, batch: TaskBatch) -> StepResult:
        """Cross-entropy of every step of the shuffled support sequence, and of the queries
        answered after it when there are any."""
        import torch

        sequence, scores, state = self.present(model, support_of(batch))
        outputs, labels = scores[..., :batch.way], sequence.labels
        if batch.query_labels.shape[1]:
            answers = model.answer(state, flat(batch.query_images))[..., :batch.way]
            outputs = torch.cat([outputs, answers], dim=1)
            labels = torch.cat([labels, batch.query_labels], dim=1)
        return query_loss(outputs, labels)


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(MemoryAugmentedNetworks)
