"""Evaluation on fixed episodes: mean accuracy with its 95% confidence interval."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from metactl.algorithm import support_of
from metactl.errors import UsageError

if TYPE_CHECKING:
    from metactl.algorithm import Algorithm
    from metactl.data.episodes import EpisodeSet, SplitData, TaskBatch
    from metactl.dataset import TaskFamily
    from metactl.engine.device import Placement
    from metactl.engine.run import TrainedModel

# Student's t is within 0.1% of the normal quantile beyond a few hundred episodes; papers use 1.96.
Z_95 = 1.96
TASKS_PER_BATCH = 16


@dataclass(frozen=True)
class EvaluationResult:
    """Mean of a per-episode metric (query accuracy, or mean squared error for regression)
    with the half-width of its 95% confidence interval."""

    mean: float
    ci95: float
    episodes: int
    way: int
    shot: int
    query: int
    split: str
    metric: str = "accuracy"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.metric == "accuracy":
            return f"accuracy {100 * self.mean:.2f}% ± {100 * self.ci95:.2f}"
        return f"{self.metric} {self.mean:.4f} ± {self.ci95:.4f}"


def confidence_interval(accuracies: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the 95% interval of per-episode accuracies, (episodes,)."""
    mean = float(accuracies.mean())
    if accuracies.numel() < 2:
        return mean, float("nan")
    return mean, Z_95 * float(accuracies.std(unbiased=True)) / math.sqrt(accuracies.numel())


def episode_accuracies(algorithm: Algorithm, model: torch.nn.Module, split: SplitData,
                       episodes: EpisodeSet, placement: Placement | None = None) -> torch.Tensor:
    """Query accuracy of every episode, (episodes,), in file order. Under torchrun, the ranks
    share the batches of episodes and every rank returns all the accuracies."""
    from metactl.data.episodes import gather_tasks
    from metactl.engine.distributed import current

    autocast = placement.autocast() if placement is not None else contextlib.nullcontext()
    episodes.check_matches(split)
    starts = range(0, episodes.episodes, TASKS_PER_BATCH)

    def accuracies(index: int) -> torch.Tensor:
        chosen = slice(starts[index], starts[index] + TASKS_PER_BATCH)
        batch = gather_tasks(split, episodes.classes[chosen], episodes.images[chosen],
                             episodes.shot, episodes.query)
        probabilities = algorithm.predict(model, support_of(batch), batch.query_images)
        correct = probabilities.argmax(-1) == batch.query_labels
        return correct.float().mean(dim=1).cpu()

    with algorithm.gradient_mode(), autocast:
        return torch.cat(current().in_order(len(starts), accuracies))


def evaluate_episodes(algorithm: Algorithm, model: torch.nn.Module, split: SplitData,
                      episodes: EpisodeSet, placement: Placement | None = None
                      ) -> EvaluationResult:
    mean, ci95 = confidence_interval(episode_accuracies(algorithm, model, split, episodes,
                                                        placement))
    return EvaluationResult(mean, ci95, episodes.episodes, episodes.way, episodes.shot,
                            episodes.query, episodes.split)


def task_scores(algorithm: Algorithm, model: torch.nn.Module, batches: list[TaskBatch],
                placement: Placement | None = None) -> tuple[torch.Tensor, str]:
    """The query score of every task, (tasks,), after adapting on its support set, and its
    name: accuracy for integer labels, mean squared error for float targets (regression);
    shared among the ranks under torchrun."""
    from metactl.engine.distributed import current

    autocast = placement.autocast() if placement is not None else contextlib.nullcontext()
    regression = bool(batches) and batches[0].query_labels.is_floating_point()

    def score(index: int) -> torch.Tensor:
        batch = batches[index]
        predictions = algorithm.predict(model, support_of(batch), batch.query_images)
        if regression:
            squared = (predictions.detach().float() - batch.query_labels).pow(2)
            return squared.flatten(1).mean(1).cpu()
        return (predictions.argmax(-1) == batch.query_labels).float().mean(dim=1).cpu()

    with algorithm.gradient_mode(), autocast:
        scores = current().in_order(len(batches), score)
    return torch.cat(scores), "mse" if regression else "accuracy"


def evaluate_batches(algorithm: Algorithm, model: torch.nn.Module, batches: list[TaskBatch],
                     placement: Placement | None = None, split: str = "val"
                     ) -> EvaluationResult:
    """Mean score with its 95% interval over fixed task batches (a task family's tasks)."""
    scores, metric = task_scores(algorithm, model, batches, placement)
    mean, ci95 = confidence_interval(scores)
    first = batches[0]
    return EvaluationResult(mean, ci95, len(scores), first.way, first.shot, first.query, split,
                            metric=metric)


def evaluate_run(run_path: Path, *, episodes: int | None = None, way: int | None = None,
                 shot: int | None = None, query: int | None = None, split: str = "test",
                 episode_file: Path | None = None, seed: int | None = None,
                 device: str | None = None, root: str | None = None,
                 inner_steps: int | None = None, settings: Mapping[str, Any] | None = None,
                 algorithm: type[Algorithm] | None = None) -> EvaluationResult:
    """Evaluate a trained run on fixed episodes (the same for every algorithm by default);
    ``inner_steps`` replaces the algorithm's number of inner gradient steps at test time,
    ``settings`` any evaluation-time setting (``evaluate --set``), ``algorithm`` the registered
    class (for runs of an unregistered one). Under torchrun the processes share the episodes;
    the result is the single-process one."""
    from metactl.engine.distributed import joined, requested_device

    with joined(requested_device(run_path, device)):
        return _evaluate_run(run_path, episodes=episodes, way=way, shot=shot, query=query,
                             split=split, episode_file=episode_file, seed=seed, device=device,
                             root=root, inner_steps=inner_steps, settings=settings,
                             algorithm=algorithm)


def _evaluate_run(run_path: Path, *, episodes: int | None, way: int | None, shot: int | None,
                  query: int | None, split: str, episode_file: Path | None, seed: int | None,
                  device: str | None, root: str | None, inner_steps: int | None,
                  settings: Mapping[str, Any] | None, algorithm: type[Algorithm] | None
                  ) -> EvaluationResult:
    from metactl.data.manage import draw_episodes, find_dataset, open_split
    from metactl.engine.run import load_trained
    from metactl.errors import check_positive

    check_positive(episodes=episodes, way=way, shot=shot, query=query)
    if episode_file is not None:
        _refuse_with_episode_file(episodes=episodes, way=way, shot=shot, query=query, seed=seed)
    trained = load_trained(run_path, device, algorithm=algorithm, settings=settings)
    if inner_steps is not None:
        trained = with_steps(trained, inner_steps)
    config = trained.config
    dataset = find_dataset(config["dataset"], root)
    if dataset.generates_tasks:
        _refuse_for_generated_tasks(dataset.name, episode_file=episode_file, way=way)
        return _evaluate_generated(trained, dataset, episodes=episodes, shot=shot, query=query,
                                   seed=seed, device=device)
    if episode_file is not None:
        episode_set = _episode_file_for(episode_file, config)
    else:
        episode_set = draw_episodes(
            config["dataset"], split=split, way=_given(way, config["way"]),
            shot=_given(shot, config["shot"]), query=_given(query, config["query"]),
            episodes=_given(episodes, config["eval_episodes"]),
            seed=_given(seed, config["eval_seed"]), root=root,
            scheme=config["scheme"], size=trained.image_shape[1])
    if episode_set.size != trained.image_shape[1]:
        raise UsageError(f"the episodes are {episode_set.size}px images, the run was trained on "
                         f"{trained.image_shape[1]}px", "use episodes of the run's image size")
    placement = trained.placement(device)
    data = open_split(episode_set.dataset, episode_set.split, root=root,
                      scheme=episode_set.scheme, size=episode_set.size).to(placement.device)
    return evaluate_episodes(trained.algorithm, trained.model, data, episode_set, placement)


def _given(value: int | None, default: Any) -> int:
    return int(default) if value is None else value


def _refuse_with_episode_file(**options: int | None) -> None:
    given = [f"--{name}" for name, value in options.items() if value is not None]
    if given:
        raise UsageError(f"--episode-file fixes the tasks, so {', '.join(given)} does not "
                         "combine with it", "drop the option, or draw a new file with "
                         "`metactl data split`")


def _refuse_for_generated_tasks(family: str, **options: Any) -> None:
    given = [f"--{name.replace('_', '-')}" for name, value in options.items()
             if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)} does not apply to a run on {family}, whose tasks "
                         "are generated", f"its tasks are drawn from the {family} family; drop "
                         "the option")


def _episode_file_for(path: Path, config: dict[str, Any]) -> EpisodeSet:
    """The episodes of ``path``, refused unless they come from the run's dataset and split
    scheme (a scheme's test classes may be another scheme's training classes)."""
    from metactl.data.cards import get_card
    from metactl.data.episodes import EpisodeSet

    episode_set = EpisodeSet.load(path)
    if episode_set.dataset != config["dataset"]:
        raise UsageError(f"the episode file is for {episode_set.dataset}, the run for "
                         f"{config['dataset']}", "use an episode file of the run's dataset")
    scheme = get_card(config["dataset"]).split_scheme(config["scheme"]).name
    if episode_set.scheme != scheme:
        raise UsageError(f"the episode file was drawn from the {episode_set.scheme} split "
                         f"scheme, and the run was trained on the {scheme} scheme, whose "
                         "training classes may be among its test classes",
                         f"draw a file with `metactl data split {config['dataset']} --scheme "
                         f"{scheme}`")
    return episode_set


def generated_test_tasks(family: TaskFamily, config: dict[str, Any], episodes: int | None,
                         shot: int | None, query: int | None, seed: int | None,
                         device: torch.device) -> list[TaskBatch]:
    """The fixed test tasks of a task family: seeded by ``eval_seed`` unless ``seed`` is given,
    one task per batch."""
    sampler = family.sampler(shot or int(config["shot"]), query or int(config["query"]),
                             int(config["eval_seed"]) if seed is None else seed, device)
    return [sampler.sample(1) for _ in range(episodes or int(config["eval_episodes"]))]


def _evaluate_generated(trained: TrainedModel, family: TaskFamily, *, episodes, shot, query,
                        seed, device) -> EvaluationResult:
    placement = trained.placement(device)
    batches = generated_test_tasks(family, trained.config, episodes, shot, query, seed,
                                   placement.device)
    return evaluate_batches(trained.algorithm, trained.model, batches, placement, "test")


def steps_setting(trained: TrainedModel) -> str:
    setting = trained.algorithm.test_steps_setting
    if setting is None:
        from metactl.errors import UsageError

        raise UsageError(f"{trained.algorithm.name} has no inner gradient steps to vary",
                         "use --inner-steps with a gradient-based algorithm such as maml")
    return setting


def with_steps(trained: TrainedModel, steps: int) -> TrainedModel:
    """A copy whose algorithm takes ``steps`` inner steps at test time."""
    algorithm = type(trained.algorithm)({**trained.algorithm.hparams,
                                         steps_setting(trained): steps})
    return replace(trained, algorithm=algorithm)
