"""Where a run's tasks come from: an image dataset's store, or a task family's generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from metactl.algorithm import Algorithm, ModelSpec
from metactl.data.augment import StandardAugmentation
from metactl.data.episodes import EpisodeSampler, EpisodeSet, SplitData, TaskBatch, check_task_shape
from metactl.engine.device import Placement
from metactl.engine.evaluator import (
    EvaluationResult,
    evaluate_batches,
    evaluate_episodes,
    generated_test_tasks,
)
from metactl.errors import UsageError

if TYPE_CHECKING:
    from metactl.dataset import TaskFamily

Report = Any


class TaskSource(Protocol):
    """Training tasks, the model's input description, and a fixed validation set."""

    spec: ModelSpec
    sampler: Any  # .sample(tasks) -> TaskBatch and a seeded .generator
    invert: bool
    higher_is_better: bool

    def validate(self, algorithm: Algorithm, model: torch.nn.Module,
                 placement: Placement) -> EvaluationResult | None: ...


def image_shape(split: SplitData) -> tuple[int, int, int]:
    shape = tuple(split.images.shape[1:])
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else (1, shape[0], shape[1])


def augmentation(config: dict[str, Any]) -> StandardAugmentation | None:
    """The training augmentation a run asks for (``augment: true``), or None."""
    return StandardAugmentation() if config.get("augment") else None


@dataclass
class ImageTasks:
    """N-way K-shot tasks from an HDF5 store; validation on fixed episodes of the val split."""

    config: dict[str, Any]
    train: SplitData
    val: SplitData | None
    invert: bool
    scheme: str
    size: int
    higher_is_better: bool = True
    validation: EpisodeSet | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        config = self.config
        check_task_shape(self.train, int(config["train_way"]), int(config["train_shot"]),
                         int(config["train_query"]))
        self.spec = ModelSpec(*image_shape(self.train), way=int(config["train_way"]),
                              num_train_classes=self.train.num_classes)
        self.sampler = EpisodeSampler(self.train, int(config["train_way"]),
                                      int(config["train_shot"]), int(config["train_query"]),
                                      seed=int(config["seed"]),
                                      augmentation=augmentation(config))
        if self.val is not None and int(config["val_episodes"]) > 0:
            check_task_shape(self.val, int(config["way"]), int(config["shot"]),
                             int(config["query"]))
            self.validation = EpisodeSet.draw(
                self.val, dataset=config["dataset"], scheme=self.scheme, size=self.size,
                way=int(config["way"]), shot=int(config["shot"]), query=int(config["query"]),
                episodes=int(config["val_episodes"]), seed=int(config["eval_seed"]))

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        return self.train.normalisation

    def validate(self, algorithm, model, placement) -> EvaluationResult | None:
        if self.validation is None:
            return None
        return evaluate_episodes(algorithm, model, self.val, self.validation, placement)


@dataclass
class GeneratedTasks:
    """Tasks of a task family (sinusoid regression...); validation on fixed seeded tasks."""

    config: dict[str, Any]
    device: torch.device
    family: TaskFamily
    invert: bool = False
    validation: list[TaskBatch] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        config = self.config
        self.spec = self.family.model_spec()
        self.higher_is_better = not self.spec.is_regression
        self.sampler = self.family.sampler(int(config["train_shot"]), int(config["train_query"]),
                                           int(config["seed"]), self.device)
        episodes = int(config["val_episodes"])
        # A seed apart from the test tasks' (eval_seed) so validation never sees them.
        seed = int(config["eval_seed"]) + 1
        self.validation = generated_test_tasks(self.family, config, episodes, None, None, seed,
                                               self.device) if episodes else []

    def validate(self, algorithm, model, placement) -> EvaluationResult | None:
        if not self.validation:
            return None
        return evaluate_batches(algorithm, model, self.validation, placement)


def load_tasks(config: dict[str, Any], device: torch.device, mirror: str | None,
               root: str | None, report: Report) -> TaskSource:
    from metactl.data.manage import find_dataset, open_split

    dataset = find_dataset(config["dataset"], root)
    if dataset.generates_tasks:
        return GeneratedTasks(config, device, dataset)
    card = dataset.card
    scheme = card.split_scheme(config["scheme"])
    size = int(config["size"] or card.geometry.default_size)
    train = open_split(card.name, "train", root=root, scheme=scheme.name, size=size, fetch=True,
                       mirror=mirror, report=report)
    val = None
    trainval = config["train_split"] == "trainval"
    if "val" in scheme.split_names and (trainval or int(config["val_episodes"]) > 0):
        val = open_split(card.name, "val", root=root, scheme=scheme.name, size=size)
    if trainval:
        if val is None:
            raise UsageError(f"the {scheme.name} split of {card.name} has no val classes to "
                             "train on", "drop --set train_split=trainval")
        train, val = train.joined(val, "trainval"), None
    if int(config.get("train_classes") or 0):  # runs saved before the setting lack it
        train = train.spread_classes(int(config["train_classes"]))
    return ImageTasks(config, train.to(device), None if val is None else val.to(device),
                      card.geometry.invert, scheme.name, size)
