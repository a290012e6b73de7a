"""Accuracy by instance position on labelled sequences (Santoro et al. 2016, table 1).

An episode is ``way`` classes with ``instances`` images each, shown in a random order as one
sequence; each label arrives one step after its image. The accuracy at position ``p`` is that of
the steps showing a class for the ``p``-th time: chance at the first, memory after. Episodes and
orders are fixed by the seed, so every online learner sees the same sequences.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from metactl.algorithm import support_of
from metactl.engine.evaluator import TASKS_PER_BATCH, confidence_interval
from metactl.errors import UsageError

if TYPE_CHECKING:
    from metactl.algorithm import Algorithm
    from metactl.data.episodes import EpisodeSet, SplitData
    from metactl.engine.device import Placement

PAPER_POSITIONS = (1, 2, 3, 4, 5, 10)


@dataclass(frozen=True)
class PositionResult:
    """Mean accuracy and 95% CI half-width at each instance position.

    Attributes:
        positions: the positions reported (1 = first presentation of a class).
        means, ci95s: one per position, in [0, 1].
    """

    positions: tuple[int, ...]
    means: tuple[float, ...]
    ci95s: tuple[float, ...]
    episodes: int
    way: int
    instances: int
    split: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "metric": "accuracy by instance"}

    def lines(self) -> list[str]:
        return [f"instance {position:>2}: accuracy {100 * mean:.2f}% ± {100 * ci95:.2f}"
                for position, mean, ci95 in zip(self.positions, self.means, self.ci95s,
                                                strict=True)]


def parse_positions(text: str) -> tuple[int, ...]:
    """``"1,2,3,4,5,10"`` -> ``(1, 2, 3, 4, 5, 10)``; ``"paper"`` gives those."""
    if text.strip() == "paper":
        return PAPER_POSITIONS
    try:
        positions = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise UsageError(f"--positions {text!r} is not a comma-separated list of whole numbers",
                         "write e.g. --positions 1,2,3,4,5,10") from None
    if positions[0] < 1:
        raise UsageError("--positions start at 1 (the first presentation of a class)",
                         "write e.g. --positions 1,2,3,4,5,10")
    return positions


def instance_numbers(labels: Tensor, way: int) -> Tensor:
    """How many times each step's class has been shown, counting this step: (T, L) -> (T, L)."""
    one_hot = torch.nn.functional.one_hot(labels, way)
    return (one_hot.cumsum(dim=1) * one_hot).sum(-1)


def accuracy_at_positions(correct: Tensor, instances: Tensor, positions: tuple[int, ...]
                          ) -> Tensor:
    """Per-episode accuracy at each position: correct (T, L) bool, instances (T, L) ->
    (T, len(positions)); NaN where an episode never reaches a position."""
    columns = []
    for position in positions:
        at = instances == position
        counts = at.sum(1)
        hits = (correct & at).sum(1).float()
        columns.append(torch.where(counts > 0, hits / counts.clamp(min=1), torch.nan))
    return torch.stack(columns, dim=1)


def presentation_orders(episodes: int, length: int, seed: int) -> Tensor:
    """A fixed random order of each episode's images, (episodes, length)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(episodes, length, generator=generator).argsort(dim=1)


def sequence_accuracies(algorithm: Algorithm, model: torch.nn.Module, split: SplitData,
                        episodes: EpisodeSet, orders: Tensor, positions: tuple[int, ...],
                        placement: Placement | None = None) -> Tensor:
    """Accuracy of every episode at each position, (episodes, len(positions))."""
    autocast = placement.autocast() if placement is not None else contextlib.nullcontext()
    results = []
    with algorithm.gradient_mode(), autocast:
        for start, batch in zip(range(0, episodes.episodes, TASKS_PER_BATCH),
                                episodes.batches(split, TASKS_PER_BATCH), strict=True):
            order = orders[start:start + batch.tasks].to(batch.support_labels.device)
            sequence = support_of(batch).reordered(order)
            scores = algorithm.sequence_logits(model, sequence)
            correct = (scores.argmax(-1) == sequence.labels).cpu()
            instances = instance_numbers(sequence.labels, batch.way).cpu()
            results.append(accuracy_at_positions(correct, instances, positions))
    return torch.cat(results)


def evaluate_positions(run_path: Path, positions: tuple[int, ...], *, episodes: int | None = None,
                       way: int | None = None, split: str = "test", seed: int | None = None,
                       device: str | None = None, root: str | None = None) -> PositionResult:
    """Evaluate a run of an online learner on fixed sequences of ``way`` classes with
    ``max(positions)`` images each."""
    from metactl.data.manage import draw_episodes, open_split
    from metactl.engine.run import load_trained
    from metactl.errors import check_positive

    check_positive(episodes=episodes, way=way)
    trained = load_trained(run_path, device)
    config, algorithm = trained.config, trained.algorithm
    if not algorithm.learns_from_sequences:
        raise UsageError(f"{config['algorithm']} does not learn from labelled sequences, so "
                         "it has no accuracy by instance position",
                         "drop --positions, or evaluate a run of an online learner such as mann")
    if trained.checkpoint.get("task", "classification") != "classification":
        raise UsageError("--positions needs a classification run",
                         "evaluate a run trained on an image dataset")
    seed = int(config["eval_seed"]) if seed is None else seed
    instances = max(positions)
    episode_set = draw_episodes(
        config["dataset"], split=split, way=int(config["way"]) if way is None else way,
        shot=instances, query=0,
        episodes=int(config["eval_episodes"]) if episodes is None else episodes, seed=seed,
        root=root,
        scheme=config["scheme"], size=trained.image_shape[1])
    placement = trained.placement(device)
    data = open_split(episode_set.dataset, split, root=root, scheme=episode_set.scheme,
                      size=episode_set.size).to(placement.device)
    orders = presentation_orders(episode_set.episodes, episode_set.way * instances, seed)
    accuracies = sequence_accuracies(algorithm, trained.model, data, episode_set, orders,
                                     positions, placement)
    summary = [confidence_interval(column) for column in accuracies.T]
    return PositionResult(positions, tuple(mean for mean, _ in summary),
                          tuple(ci95 for _, ci95 in summary), episode_set.episodes,
                          episode_set.way, instances, split)
