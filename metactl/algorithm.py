"""The contract every algorithm plugin fulfils.

An algorithm is a class with a name, a family, a one-line summary and the paper it implements;
its hyperparameter defaults as data; its device settings; a model builder; and an inner loop:
``adapt(model, support) -> task state``, then ``logits(model, state, query images)``. The task
state is opaque to the engine: nothing for metric methods (prototypes, say), adapted parameters
for MAML and Reptile, an LSTM-updated learner for Meta-Learner LSTM, fast weights for MetaNet,
a memory for MANN.

The engine owns the rest: the outer optimizer and its schedule, the loop over meta-batches,
validation, checkpoints, seeds, evaluation with confidence intervals and prediction I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from torch import Tensor, nn

    from metactl.data.episodes import TaskBatch

FAMILIES = ("metric", "model", "optimization", "baseline")


@dataclass(frozen=True)
class DeviceSettings:
    """How an algorithm prefers to run; the engine applies these and the user may override them.

    Attributes:
        preferred: devices to try in order when the user asks for ``auto``.
        mixed_precision: ``"auto"`` (bf16 autocast where the device computes bfloat16
            natively: a CPU with AVX-512 BF16 or AMX, a CUDA GPU from Ampere on; float32
            elsewhere), ``"bf16"``, ``"fp16"`` (CUDA only) or ``None`` (always float32, for
            models that need its precision).
        channels_last: use the channels-last memory format for convolutions; ``"auto"``: on
            the CPU, and on CUDA with reduced precision (where it pays).
        compile: wrap the model in ``torch.compile``.
        deterministic: ask PyTorch for deterministic kernels (slower on CUDA).
        cuda_graphs: on CUDA, capture the meta-gradient in a CUDA graph and replay it
            (:mod:`metactl.engine.graphs`); only for steps of fixed shapes that never wait for
            the GPU (no ``.item()``: report accuracy as a tensor).
    """

    preferred: tuple[str, ...] = ("cuda", "cpu")
    mixed_precision: str | None = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    deterministic: bool = False
    cuda_graphs: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """What a model builder needs to know about the data and the task.

    Attributes:
        channels, height, width: the image shape the model receives; for regression tasks,
            ``channels`` is the number of input features and height = width = 1.
        way: classes per training task (for heads with one output per class); 1 for regression.
        num_train_classes: classes in the training split (for pre-training heads).
        task: ``"classification"`` (images and integer labels) or ``"regression"`` (feature
            vectors and float targets, e.g. the sinusoid tasks).
    """

    channels: int
    height: int
    width: int
    way: int
    num_train_classes: int = 0
    task: str = "classification"

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"


@dataclass(frozen=True)
class LabelledImages:
    """Images of a batch of tasks with their labels.

    Attributes:
        images: float, (tasks, images, channels, height, width).
        labels: int64, (tasks, images), values in [0, way).
        way: classes per task.
    """

    images: Tensor
    labels: Tensor
    way: int

    @property
    def tasks(self) -> int:
        return self.images.shape[0]

    def reordered(self, order: Tensor) -> LabelledImages:
        """Each task's images and labels permuted by ``order``, int64 (tasks, images)."""
        index = order.view(*order.shape, *([1] * (self.images.dim() - 2)))
        return LabelledImages(self.images.gather(1, index.expand_as(self.images)),
                              self.labels.gather(1, order), self.way)


@dataclass(frozen=True)
class PaperResult:
    """One figure of the paper's results table, and the training protocol behind it.

    Attributes:
        dataset, way, shot: the test setting.
        accuracy: the paper's mean test accuracy, in percent.
        protocol: the key of :attr:`Algorithm.paper_protocols` whose trained model the paper
            evaluated on this setting (one model is often evaluated on several settings).
        ci95: the half-width of the paper's 95% interval, in percent, where it gives one.
        source: where the figure is printed, e.g. ``"Table 1"``.
        tolerance: how many points apart ours and the paper's may be and still "match".
        note: anything a reader must know to compare, e.g. ``"transductive"``.
    """

    dataset: str
    way: int
    shot: int
    accuracy: float
    protocol: str
    ci95: float | None = None
    source: str = ""
    tolerance: float = 0.5
    note: str = ""

    @property
    def setting(self) -> str:
        """The short name users select it by: ``5w1s``."""
        return f"{self.way}w{self.shot}s"


def _inherited(cls: type, attribute: str) -> Iterator[tuple[str, Any]]:
    """The items of ``attribute`` (a mapping) of the nearest base class that has it."""
    for base in cls.__mro__[1:]:
        if attribute in base.__dict__:
            yield from base.__dict__[attribute].items()
            return


def support_of(batch: TaskBatch) -> LabelledImages:
    return LabelledImages(batch.support_images, batch.support_labels, batch.way)


@dataclass
class StepResult:
    """What one meta-training step reports.

    Attributes:
        loss: scalar tensor; the meta-objective (detached by the engine for logging).
        accuracy: mean query accuracy in [0, 1], if the method classifies: a float, or a 0-d
            tensor that the engine reads after the step (so the step never waits for the GPU).
        extra: other scalars worth logging, floats or 0-d tensors.
    """

    loss: Tensor
    accuracy: float | Tensor | None = None
    extra: dict[str, float | Tensor] = field(default_factory=dict)


def query_loss(outputs: Tensor, labels: Tensor) -> StepResult:
    """Cross-entropy and accuracy of scores (tasks, queries, way) against int64 labels
    (tasks, queries); mean squared error of predictions against float targets of the same
    shape for regression."""
    import torch.nn.functional as functional

    if labels.is_floating_point():
        loss = functional.mse_loss(outputs, labels)
        return StepResult(loss, None, {"mse": loss.detach()})
    loss = functional.cross_entropy(outputs.flatten(0, 1), labels.flatten())
    accuracy = (outputs.argmax(-1) == labels).float().mean()
    return StepResult(loss, accuracy)


class InnerLoop(Protocol):
    """How a learner adapts to a task's support set; reusable across algorithms.

    ``adapt`` returns the task state that the query pass uses. Metric methods use
    :class:`NoAdaptation`; gradient-based ones return adapted parameters.
    """

    def adapt(self, algorithm: Algorithm, model: nn.Module, support: LabelledImages) -> Any: ...


class NoAdaptation:
    """The identity inner loop of metric methods: the task state is the embedded support set,
    computed by the algorithm's own :meth:`Algorithm.task_state`."""

    def adapt(self, algorithm: Algorithm, model: nn.Module, support: LabelledImages) -> Any:
        return algorithm.task_state(model, support)


class Algorithm:
    """Base class of metactl algorithms. Subclass it, fill in the class attributes, implement
    :meth:`build_model` and :meth:`logits` (and :meth:`task_state` or an ``inner_loop``), and
    register the class from a ``metactl_register_algorithms`` hook.

    Class attributes:
        name: what users type (``metactl train NAME``); lower case, digits and dashes.
        family: one of ``metric``, ``model``, ``optimization``, ``baseline``.
        summary: one line for ``metactl plugins list``.
        paper: the citation of the method.
        defaults: hyperparameters as data: ``{"*": {...}, "omniglot": {...},
            "omniglot/1-shot": {...}, "omniglot/5-way": {...}}``; the engine merges the entries
            that match the run, most specific last, then the config file, then CLI options.
        hyperparameter_help: one line per algorithm-specific hyperparameter.
        device: the preferred :class:`DeviceSettings`.
        inner_loop: the strategy that turns a support set into a task state; set it per
            instance in ``__init__`` when it depends on hyperparameters.
        adapts_with_gradients: whether the inner loop differentiates (MAML); when false, the
            engine evaluates and predicts under ``torch.no_grad()``.
        tasks: the kinds of task the algorithm handles: ``"classification"`` and, for
            methods whose model is not tied to images, ``"regression"``.
        test_steps_setting: the hyperparameter holding the number of inner gradient steps at
            test time, for ``metactl evaluate --inner-steps``; ``None`` when there are none.
        learns_from_sequences: whether the algorithm implements :meth:`sequence_logits`, so
            that ``metactl evaluate --positions`` can score it by instance position (MANN).
        trains_without_queries: whether the training loss needs no query set (Reptile), so
            that ``train_query=0`` is accepted.
        paper_protocols: the paper's training protocols as data, by name: the settings that
            ``metactl train`` needs on top of the algorithm's defaults to train the model the
            paper evaluated (``{"omniglot-1shot": {"dataset": "omniglot", "shot": 1, ...}}``).
        paper_results: the paper's results table, one :class:`PaperResult` per figure, each
            naming its protocol; ``metactl reproduce`` trains, evaluates and compares them.
        batch_norm_spans_tasks: whether the model's batch norm normalises the images of every
            task of a meta-batch together in training (one forward pass over all tasks, as
            metric methods do); under torchrun the engine then takes its statistics over
            every process's tasks, so that the run equals a single-process one. Leave it false
            when batch norm sees one task at a time (MAML, Reptile).
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    hyperparameter_help: ClassVar[Mapping[str, str]] = {}
    device: ClassVar[DeviceSettings] = DeviceSettings()
    inner_loop: InnerLoop = NoAdaptation()
    adapts_with_gradients: ClassVar[bool] = False
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    test_steps_setting: ClassVar[str | None] = None
    learns_from_sequences: ClassVar[bool] = False
    trains_without_queries: ClassVar[bool] = False
    paper_protocols: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    paper_results: ClassVar[tuple[PaperResult, ...]] = ()
    batch_norm_spans_tasks: ClassVar[bool] = False

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)
        # Fraction of meta-training done before the current step, in [0, 1); the trainer sets
        # it before each step (schedules such as Reptile's annealed outer step read it).
        self.progress: float | None = None
        # What training_statistics returned; restored from the checkpoint for evaluation.
        self.statistics: dict[str, Tensor] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's ``defaults`` and ``hyperparameter_help`` extend its parent's: an entry
        of the subclass (``"*"``, ``"omniglot"``...) updates the parent's entry of that name
        key by key, so a subclass states only what it changes."""
        super().__init_subclass__(**kwargs)
        if "defaults" in cls.__dict__:
            merged = {setting: dict(values) for setting, values in _inherited(cls, "defaults")}
            for setting, values in cls.__dict__["defaults"].items():
                merged[setting] = {**merged.get(setting, {}), **values}
            cls.defaults = merged
        if "hyperparameter_help" in cls.__dict__:
            cls.hyperparameter_help = {**dict(_inherited(cls, "hyperparameter_help")),
                                       **cls.__dict__["hyperparameter_help"]}

    def build_model(self, spec: ModelSpec) -> nn.Module:
        """The network whose parameters the engine's outer optimizer trains."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model")

    def task_state(self, model: nn.Module, support: LabelledImages) -> Any:
        """For :class:`NoAdaptation`: what the query pass needs from the support set."""
        raise NotImplementedError(f"{type(self).__name__} must implement task_state")

    def adapt(self, model: nn.Module, support: LabelledImages) -> Any:
        """Run the inner loop on a batch of support sets and return the task state."""
        return self.inner_loop.adapt(self, model, support)

    def logits(self, model: nn.Module, state: Any, query_images: Tensor) -> Tensor:
        """Class scores of the query images given the task state.

        Args:
            query_images: float, (tasks, queries, channels, height, width).

        Returns:
            float, (tasks, queries, way).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement logits")

    def training_statistics(self, model: nn.Module, batches: Iterable[LabelledImages]
                            ) -> dict[str, Tensor]:
        """Statistics of the training data that the query pass needs (SimpleShot's mean
        feature, say); default: none, and the data is never read.

        The engine calls it with the model in evaluation mode under ``torch.no_grad()`` before
        the first training step, before each validation and at the end of training, stores the
        result in the checkpoints, and sets it as ``self.statistics`` before validation,
        evaluation and prediction.

        Args:
            batches: the training split once over, in class order: one task per batch, images
                float (1, N, C, H, W) in [0, 1] on the model's device, labels int64 (1, N), the
                training class of each image; empty for synthetic tasks (sinusoid).

        Returns:
            name -> tensor; small (it is saved with every checkpoint).
        """
        return {}

    def sequence_logits(self, model: nn.Module, sequence: LabelledImages) -> Tensor:
        """For online learners: class scores of a labelled sequence presented in order, each
        label shown one step after its image, so step t is predicted from the t labelled images
        before it (Santoro et al. 2016).

        Args:
            sequence: images (tasks, steps, channels, height, width), labels (tasks, steps).

        Returns:
            float, (tasks, steps, way).
        """
        raise NotImplementedError(f"{type(self).__name__} does not learn from sequences")

    def loss(self, model: nn.Module, batch: TaskBatch) -> StepResult:
        """The meta-objective on a batch of tasks: query cross-entropy after adaptation (mean
        squared error for regression tasks, whose labels are float)."""
        state = self.adapt(model, support_of(batch))
        outputs = self.logits(model, state, batch.query_images)
        return query_loss(outputs, batch.query_labels)

    def meta_gradient(self, model: nn.Module, batch: TaskBatch) -> StepResult:
        """Leave the meta-gradient in the parameters' ``.grad``; the engine then steps its
        optimizer. Override for updates that are not the gradient of a loss (Reptile)."""
        result = self.loss(model, batch)
        result.loss.backward()
        return result

    def gradient_mode(self):
        """The autograd context for evaluation and prediction: gradients only where the inner
        loop differentiates."""
        import torch

        return torch.enable_grad() if self.adapts_with_gradients else torch.no_grad()

    def predict(self, model: nn.Module, support: LabelledImages, query_images: Tensor) -> Tensor:
        """Class probabilities of the queries, (tasks, queries, way), after adapting; for
        regression tasks, the predictions themselves, (tasks, queries, outputs)."""
        outputs = self.logits(model, self.adapt(model, support), query_images)
        return outputs if support.labels.is_floating_point() else outputs.softmax(-1)
