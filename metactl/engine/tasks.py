"""Where a run's tasks come from: an image dataset's store, or a synthetic task family."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from metactl.algorithm import Algorithm, ModelSpec
from metactl.data.episodes import EpisodeSampler, EpisodeSet, SplitData, TaskBatch, check_task_shape
from metactl.engine.device import Placement
from metactl.engine.evaluator import EvaluationResult, evaluate_episodes, evaluate_regression
from metactl.errors import UsageError

Report = Any
SYNTHETIC_DATASETS = ("sinusoid",)


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
                                      seed=int(config["seed"]))
        if self.val is not None and int(config["val_episodes"]) > 0:
            check_task_shape(self.val, int(config["way"]), int(config["shot"]),
                             int(config["query"]))
            self.validation = EpisodeSet.draw(
                self.val, dataset=config["dataset"], scheme=self.scheme, size=self.size,
                way=int(config["way"]), shot=int(config["shot"]), query=int(config["query"]),
                episodes=int(config["val_episodes"]), seed=int(config["eval_seed"]))

    def validate(self, algorithm, model, placement) -> EvaluationResult | None:
        if self.validation is None:
            return None
        return evaluate_episodes(algorithm, model, self.val, self.validation, placement)


@dataclass
class SinusoidTasks:
    """Sinusoid regression tasks (MAML, section 5.1); validation on fixed seeded tasks."""

    config: dict[str, Any]
    device: torch.device
    invert: bool = False
    higher_is_better: bool = False
    validation: list[TaskBatch] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        from metactl.data.sinusoid import SinusoidSampler

        config = self.config
        self.spec = ModelSpec(1, 1, 1, way=1, task="regression")
        self.sampler = SinusoidSampler(int(config["train_shot"]), int(config["train_query"]),
                                       seed=int(config["seed"]), device=self.device)
        # A seed apart from the test tasks' (eval_seed) so validation never sees them.
        validation = SinusoidSampler(int(config["shot"]), int(config["query"]),
                                     seed=int(config["eval_seed"]) + 1, device=self.device)
        self.validation = validation.fixed(int(config["val_episodes"]))

    def validate(self, algorithm, model, placement) -> EvaluationResult | None:
        if not self.validation:
            return None
        return evaluate_regression(algorithm, model, self.validation, placement)


def load_tasks(config: dict[str, Any], device: torch.device, mirror: str | None,
               root: str | None, report: Report) -> TaskSource:
    if config["dataset"] == "sinusoid":
        return SinusoidTasks(config, device)
    from metactl.data.cards import get_card
    from metactl.data.manage import open_split

    card = get_card(config["dataset"])
    scheme = card.split_scheme(config["scheme"])
    size = int(config["size"] or card.geometry.default_size)
    train = open_split(card.name, "train", root=root, scheme=scheme.name, size=size, fetch=True,
                       mirror=mirror, report=report)
    val = None
    if "val" in scheme.split_names:
        val = open_split(card.name, "val", root=root, scheme=scheme.name, size=size)
    if config["train_split"] == "trainval":
        if val is None:
            raise UsageError(f"the {scheme.name} split of {card.name} has no val classes to "
                             "train on", "drop --set train_split=trainval")
        train, val = train.joined(val, "trainval"), None
    return ImageTasks(config, train.to(device), None if val is None else val.to(device),
                      card.geometry.invert, scheme.name, size)
