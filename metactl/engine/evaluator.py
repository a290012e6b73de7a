"""Evaluation on fixed episodes: mean accuracy with its 95% confidence interval."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from metactl.algorithm import support_of

if TYPE_CHECKING:
    from metactl.algorithm import Algorithm
    from metactl.data.episodes import EpisodeSet, SplitData, TaskBatch
    from metactl.engine.device import Placement

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


def regression_errors(algorithm: Algorithm, model: torch.nn.Module, batches: list[TaskBatch],
                      placement: Placement | None = None) -> torch.Tensor:
    """Query mean squared error of every task, (tasks,), after adapting on its support set;
    shared among the ranks under torchrun."""
    from metactl.engine.distributed import current

    autocast = placement.autocast() if placement is not None else contextlib.nullcontext()

    def errors(index: int) -> torch.Tensor:
        batch = batches[index]
        predictions = algorithm.predict(model, support_of(batch), batch.query_images)
        squared = (predictions.detach().float() - batch.query_labels).pow(2)
        return squared.flatten(1).mean(1).cpu()

    with algorithm.gradient_mode(), autocast:
        return torch.cat(current().in_order(len(batches), errors))


def evaluate_regression(algorithm: Algorithm, model: torch.nn.Module, batches: list[TaskBatch],
                        placement: Placement | None = None, split: str = "val"
                        ) -> EvaluationResult:
    mean, ci95 = confidence_interval(regression_errors(algorithm, model, batches, placement))
    first = batches[0]
    return EvaluationResult(mean, ci95, len(batches), first.way, first.shot, first.query, split,
                            metric="mse")


def evaluate_run(run_path: Path, *, episodes: int | None = None, way: int | None = None,
                 shot: int | None = None, query: int | None = None, split: str = "test",
                 episode_file: Path | None = None, seed: int | None = None,
                 device: str | None = None, root: str | None = None,
                 inner_steps: int | None = None) -> EvaluationResult:
    """Evaluate a trained run on fixed episodes (the same for every algorithm by default);
    ``inner_steps`` replaces the algorithm's number of inner gradient steps at test time.
    Under torchrun the processes share the episodes; the result is the single-process one."""
    from metactl.engine.distributed import joined
    from metactl.engine.run import open_run

    requested = device or str(open_run(run_path).read_config().get("device", "auto"))
    with joined(requested):
        return _evaluate_run(run_path, episodes=episodes, way=way, shot=shot, query=query,
                             split=split, episode_file=episode_file, seed=seed, device=device,
                             root=root, inner_steps=inner_steps)


def _evaluate_run(run_path: Path, *, episodes: int | None, way: int | None, shot: int | None,
                  query: int | None, split: str, episode_file: Path | None, seed: int | None,
                  device: str | None, root: str | None, inner_steps: int | None
                  ) -> EvaluationResult:
    from metactl.data.episodes import EpisodeSet
    from metactl.data.manage import draw_episodes, open_split
    from metactl.engine.run import load_trained
    from metactl.errors import UsageError

    trained = load_trained(run_path, device)
    if inner_steps is not None:
        from metactl.engine.sinusoid_report import with_steps

        trained = with_steps(trained, inner_steps)
    config = trained.config
    if config["dataset"] == "sinusoid":
        return _evaluate_sinusoid(trained, episodes=episodes, shot=shot, query=query, seed=seed,
                                  device=device)
    if episode_file is not None:
        episode_set = EpisodeSet.load(episode_file)
        if episode_set.dataset != config["dataset"]:
            raise UsageError(f"the episode file is for {episode_set.dataset}, the run for "
                             f"{config['dataset']}", "use an episode file of the run's dataset")
    else:
        episode_set = draw_episodes(
            config["dataset"], split=split, way=way or int(config["way"]),
            shot=shot or int(config["shot"]), query=query or int(config["query"]),
            episodes=episodes or int(config["eval_episodes"]),
            seed=int(config["eval_seed"]) if seed is None else seed, root=root,
            scheme=config["scheme"], size=trained.image_shape[1])
    if episode_set.size != trained.image_shape[1]:
        raise UsageError(f"the episodes are {episode_set.size}px images, the run was trained on "
                         f"{trained.image_shape[1]}px", "use episodes of the run's image size")
    placement = trained.placement(device)
    data = open_split(episode_set.dataset, episode_set.split, root=root,
                      scheme=episode_set.scheme, size=episode_set.size).to(placement.device)
    return evaluate_episodes(trained.algorithm, trained.model, data, episode_set, placement)


def sinusoid_test_tasks(config: dict[str, Any], episodes: int | None, shot: int | None,
                        query: int | None, seed: int | None, device: torch.device
                        ) -> list[TaskBatch]:
    """The fixed sinusoid test tasks: seeded by ``eval_seed`` unless ``seed`` is given."""
    from metactl.data.sinusoid import SinusoidSampler

    sampler = SinusoidSampler(shot or int(config["shot"]), query or int(config["query"]),
                              seed=int(config["eval_seed"]) if seed is None else seed,
                              device=device)
    return sampler.fixed(episodes or int(config["eval_episodes"]))


def _evaluate_sinusoid(trained, *, episodes, shot, query, seed, device) -> EvaluationResult:
    placement = trained.placement(device)
    batches = sinusoid_test_tasks(trained.config, episodes, shot, query, seed, placement.device)
    return evaluate_regression(trained.algorithm, trained.model, batches, placement, "test")
