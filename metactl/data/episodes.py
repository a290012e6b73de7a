"""N-way K-shot tasks: the seeded sampler and fixed episode files.

Classes are numbered in the *sampling space* of a split: with ``R`` rotations, class ``c``
is stored class ``c // R`` rotated by ``rotations[c % R]`` degrees. Images inside a class are
numbered from 0. An episode is therefore ``way`` class numbers and, for each class,
``shot + query`` image numbers; the first ``shot`` are the support set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metactl.errors import DataError, UsageError

EPISODE_FORMAT = "metactl-episodes"
EPISODE_VERSION = 1

Augmentation = Callable[[Tensor, torch.Generator], Tensor]
"""Transforms sampled pixels in [0, 1], (tasks, way, images, C, H, W), drawing its randomness
from the sampler's generator; applied before normalisation, in training only."""


@dataclass(frozen=True)
class SplitData:
    """One split of a store, in memory.

    Attributes:
        images: uint8 tensor, (images, height, width) or (images, height, width, channels),
            sorted by stored class.
        offsets: int64 tensor, (stored classes + 1,); class ``i`` is
            ``images[offsets[i]:offsets[i+1]]``.
        class_names: one name per stored class.
        rotations: angles in degrees; each stored class yields one sampling class per angle.
        name: the split's name (train / val / test).
        fingerprint: the store's content checksum, recorded in episode files.
        normalisation: per-channel (mean, std) in [0, 1] units that sampled images are
            normalised with (the train split's statistics, recorded in the store), or None.
    """

    images: Tensor
    offsets: Tensor
    class_names: tuple[str, ...]
    rotations: tuple[int, ...] = (0,)
    name: str = ""
    fingerprint: str = ""
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def stored_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_classes(self) -> int:
        return self.stored_classes * len(self.rotations)

    @property
    def counts(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def min_images_per_class(self) -> int:
        return int(self.counts.min()) if self.stored_classes else 0

    def class_name(self, sampling_class: int) -> str:
        stored, turn = divmod(sampling_class, len(self.rotations))
        name = self.class_names[stored]
        return name if len(self.rotations) == 1 else f"{name}/rot{self.rotations[turn]:03d}"

    def joined(self, other: SplitData, name: str) -> SplitData:
        """This split's classes followed by ``other``'s, as one split called ``name`` (train and
        val joined to train a final model on both, as Vinyals et al. and Snell et al. did)."""
        if self.rotations != other.rotations or self.images.shape[1:] != other.images.shape[1:]:
            raise DataError(f"splits {self.name!r} and {other.name!r} hold different images",
                            "rebuild the store with `metactl data preprocess`")
        offsets = torch.cat([self.offsets[:-1], other.offsets + self.offsets[-1]])
        return replace(self, images=torch.cat([self.images, other.images]), offsets=offsets,
                       class_names=self.class_names + other.class_names, name=name)

    def spread_classes(self, count: int) -> SplitData:
        """``count`` of this split's sampling classes, spread evenly over its stored classes
        (each stored class brings all its rotations, so ``count`` rounds up to a multiple of
        them); the whole split when it has no more."""
        wanted = min(self.stored_classes, -(-count // len(self.rotations)))
        if wanted >= self.stored_classes:
            return self
        chosen = torch.linspace(0, self.stored_classes - 1, wanted).round().long().tolist()
        starts, ends = self.offsets[:-1].tolist(), self.offsets[1:].tolist()
        pieces = [self.images[starts[c]:ends[c]] for c in chosen]
        sizes = torch.tensor([0] + [len(piece) for piece in pieces])
        return replace(self, images=torch.cat(pieces), offsets=sizes.cumsum(0),
                       class_names=tuple(self.class_names[c] for c in chosen))

    def to(self, device: torch.device | str) -> SplitData:
        return replace(self, images=self.images.to(device), offsets=self.offsets.to(device))

    def unnormalised(self) -> SplitData:
        """The same split, sampled as plain [0, 1] pixels (to look at them)."""
        return replace(self, normalisation=None)


@dataclass(frozen=True)
class TaskBatch:
    """A batch of N-way K-shot tasks.

    Attributes:
        support_images: float, (tasks, way * shot, channels, height, width), in [0, 1].
        support_labels: int64, (tasks, way * shot), values in [0, way).
        query_images: float, (tasks, way * query, channels, height, width).
        query_labels: int64, (tasks, way * query).
        classes: int64, (tasks, way): the sampling-space class behind each label.
    """

    support_images: Tensor
    support_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    classes: Tensor
    way: int
    shot: int
    query: int

    @property
    def tasks(self) -> int:
        return self.support_images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TaskBatch:
        def move(tensor: Tensor) -> Tensor:
            return tensor.to(device, non_blocking=non_blocking)

        return TaskBatch(move(self.support_images), move(self.support_labels),
                         move(self.query_images), move(self.query_labels), move(self.classes),
                         self.way, self.shot, self.query)


def check_task_shape(split: SplitData, way: int, shot: int, query: int) -> None:
    """Raise a one-line error if ``split`` cannot supply ``way``-way ``shot``+``query`` tasks."""
    label = f"split {split.name!r}" if split.name else "the split"
    if way < 2:
        raise UsageError(f"way must be at least 2, got {way}", "pass --way 2 or more")
    if shot < 1 or query < 0:
        raise UsageError(f"shot must be >= 1 and query >= 0, got shot={shot} query={query}",
                         "pass positive counts")
    if way > split.num_classes:
        raise UsageError(f"way {way} is larger than the {split.num_classes} classes of {label}",
                         f"use --way {split.num_classes} or fewer")
    per_class = split.min_images_per_class
    if shot + query > per_class:
        raise UsageError(
            f"shot + query = {shot + query} is more than the {per_class} images per class "
            f"of {label}",
            f"lower --shot or --query so that they add up to at most {per_class}")


class EpisodeSampler:
    """Draws batches of tasks from a split with no per-image Python work.

    Indices are drawn on the CPU from a seeded ``torch.Generator`` (so the same seed gives the
    same tasks on every device); images are gathered from the split's uint8 tensor on its own
    device, rotated in groups, and converted to float there.

    Args:
        split: the images; move it to the GPU first (``split.to("cuda")``) to sample there.
        way, shot, query: the task shape.
        seed: seeds the generator.
        augmentation: applied to every sampled batch (training only).
    """

    def __init__(self, split: SplitData, way: int, shot: int, query: int, seed: int = 0,
                 augmentation: Augmentation | None = None) -> None:
        check_task_shape(split, way, shot, query)
        self.split = split
        self.way, self.shot, self.query = way, shot, query
        self.augmentation = augmentation
        self.generator = torch.Generator().manual_seed(seed)
        self._counts = split.counts.cpu()
        self._offsets = split.offsets.cpu()

    def draw_indices(self, tasks: int) -> tuple[Tensor, Tensor]:
        """Class numbers, (tasks, way), and image numbers, (tasks, way, shot + query)."""
        num_classes = self.split.num_classes
        keys = torch.rand(tasks, num_classes, generator=self.generator)
        classes = keys.topk(self.way, dim=1).indices
        stored = classes // len(self.split.rotations)
        counts = self._counts[stored]
        longest = int(counts.max())
        keys = torch.rand(tasks, self.way, longest, generator=self.generator)
        keys = keys.masked_fill(torch.arange(longest) >= counts.unsqueeze(-1), -1.0)
        images = keys.topk(self.shot + self.query, dim=-1).indices
        return classes, images

    def sample(self, tasks: int = 1) -> TaskBatch:
        classes, images = self.draw_indices(tasks)
        return self.gather(classes, images)

    def __iter__(self):
        while True:
            yield self.sample()

    def gather(self, classes: Tensor, images: Tensor) -> TaskBatch:
        """Build a :class:`TaskBatch` from class numbers (tasks, way) and image numbers
        (tasks, way, shot + query)."""
        augment = None
        if self.augmentation is not None:
            augment = lambda pixels: self.augmentation(pixels, self.generator)  # noqa: E731
        return gather_tasks(self.split, classes, images, self.shot, self.query, augment)


def gather_tasks(split: SplitData, classes: Tensor, images: Tensor, shot: int, query: int,
                 augment: Callable[[Tensor], Tensor] | None = None) -> TaskBatch:
    tasks, way = classes.shape
    turns = len(split.rotations)
    stored, turn = classes // turns, classes % turns
    # Indices go to the images' device: offsets.cpu() would be a device-to-host sync per batch.
    device = split.images.device
    flat = split.offsets.to(device)[stored.to(device)].unsqueeze(-1) + images.to(device)
    # index_select copies rows; advanced indexing copies byte by byte on the CPU (5-25x slower)
    pixels = split.images.index_select(0, flat.reshape(-1))
    pixels = pixels.reshape(tasks, way, shot + query, *pixels.shape[1:])
    if pixels.dim() == 6:  # (..., height, width, channels) -> channels first
        pixels = pixels.permute(0, 1, 2, 5, 3, 4)
    else:
        pixels = pixels.unsqueeze(3)
    pixels = _rotate(pixels, turn.to(pixels.device), split.rotations)
    pixels = pixels.float().div_(255.0)
    if augment is not None:
        pixels = augment(pixels)
    if split.normalisation is not None:
        mean, std = (torch.tensor(values, device=pixels.device).view(-1, 1, 1)
                     for values in split.normalisation)
        pixels = pixels.sub_(mean).div_(std)
    labels = torch.arange(way, device=pixels.device).view(1, way, 1)
    support_labels = labels.expand(tasks, way, shot).reshape(tasks, way * shot)
    query_labels = labels.expand(tasks, way, query).reshape(tasks, way * query)
    shape = pixels.shape[3:]
    return TaskBatch(
        support_images=pixels[:, :, :shot].reshape(tasks, way * shot, *shape),
        support_labels=support_labels,
        query_images=pixels[:, :, shot:].reshape(tasks, way * query, *shape),
        query_labels=query_labels,
        classes=classes.to(pixels.device),
        way=way, shot=shot, query=query,
    )


def _rotate(pixels: Tensor, turn: Tensor, rotations: tuple[int, ...]) -> Tensor:
    """Rotate each class of ``pixels`` (tasks, way, images, C, H, W) by its angle.

    One gather through precomputed pixel maps: masks and ``torch.rot90`` per angle cost several
    small kernels and a host sync each.
    """
    if all(angle == 0 for angle in rotations):
        return pixels
    *batch, height, width = pixels.shape
    maps = _rotation_maps(height, width, rotations, pixels.device)[turn]  # (tasks, way, H*W)
    index = maps[:, :, None, None, :].expand(*batch, height * width)
    return pixels.reshape(*batch, height * width).gather(-1, index).view(pixels.shape)


@lru_cache(maxsize=16)
def _rotation_maps(height: int, width: int, rotations: tuple[int, ...], device: torch.device
                   ) -> Tensor:
    """For each angle, the source of every pixel of the rotated image: int64, (angles, H * W)."""
    if height != width and any(angle % 180 for angle in rotations):
        raise ValueError(f"cannot rotate {height}x{width} images by 90 degrees in a batch")
    grid = torch.arange(height * width, device=device).view(height, width)
    return torch.stack([torch.rot90(grid, angle // 90, dims=(0, 1)).reshape(-1)
                        for angle in rotations])


@dataclass(frozen=True)
class EpisodeSet:
    """A fixed list of tasks, saved as JSON so every algorithm sees the same ones.

    Attributes:
        classes: int64, (episodes, way).
        images: int64, (episodes, way, shot + query).
    """

    dataset: str
    scheme: str
    split: str
    size: int
    way: int
    shot: int
    query: int
    seed: int
    fingerprint: str
    classes: Tensor
    images: Tensor

    @property
    def episodes(self) -> int:
        return self.classes.shape[0]

    @classmethod
    def draw(cls, split: SplitData, *, dataset: str, scheme: str, size: int, way: int, shot: int,
             query: int, episodes: int, seed: int) -> EpisodeSet:
        sampler = EpisodeSampler(split, way, shot, query, seed)
        classes, images = sampler.draw_indices(episodes)
        return cls(dataset, scheme, split.name, size, way, shot, query, seed, split.fingerprint,
                   classes, images)

    def batches(self, split: SplitData, tasks_per_batch: int = 1):
        """Yield the episodes as :class:`TaskBatch` objects, in order."""
        self.check_matches(split)
        for start in range(0, self.episodes, tasks_per_batch):
            stop = start + tasks_per_batch
            yield gather_tasks(split, self.classes[start:stop], self.images[start:stop],
                               self.shot, self.query)

    def check_matches(self, split: SplitData) -> None:
        if self.fingerprint and split.fingerprint and self.fingerprint != split.fingerprint:
            raise DataError(
                f"the episode file was drawn from a different {self.dataset} store "
                f"(content {self.fingerprint[:12]}, this store {split.fingerprint[:12]})",
                "draw a new file with `metactl data split` or rebuild the store it came from")
        check_task_shape(split, self.way, self.shot, self.query)
        self._check_indices(split)

    def _check_indices(self, split: SplitData) -> None:
        """Every class must exist in ``split`` and every image in its class, none twice in an
        episode: an edited file must never gather another class's images."""
        hint = "draw a new file with `metactl data split`"
        classes, images = self.classes, self.images
        outside = (classes < 0) | (classes >= split.num_classes)
        if outside.any():
            episode, slot = (int(i) for i in outside.nonzero()[0])
            raise DataError(f"episode {episode} of the file names class "
                            f"{int(classes[episode, slot])}, and split {split.name!r} has "
                            f"classes 0..{split.num_classes - 1}", hint)
        ordered = classes.sort(dim=1).values
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
        if repeated.any():
            raise DataError(f"episode {int(repeated.nonzero()[0])} of the file names a class "
                            "twice", hint)
        counts = split.counts.cpu()[classes // len(split.rotations)]  # (episodes, way)
        outside = (images < 0) | (images >= counts.unsqueeze(-1))
        if outside.any():
            episode, slot, position = (int(i) for i in outside.nonzero()[0])
            raise DataError(f"episode {episode} of the file names image "
                            f"{int(images[episode, slot, position])} of class "
                            f"{int(classes[episode, slot])}, which has images "
                            f"0..{int(counts[episode, slot]) - 1}", hint)
        ordered = images.sort(dim=-1).values
        repeated = (ordered[..., 1:] == ordered[..., :-1]).any(dim=-1)
        if repeated.any():
            episode, slot = (int(i) for i in repeated.nonzero()[0])
            raise DataError(f"episode {episode} of the file uses an image of class "
                            f"{int(classes[episode, slot])} twice (a query would be in the "
                            "support set)", hint)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EPISODE_FORMAT, "version": EPISODE_VERSION,
            "dataset": self.dataset, "scheme": self.scheme, "split": self.split, "size": self.size,
            "way": self.way, "shot": self.shot, "query": self.query, "seed": self.seed,
            "episodes": self.episodes, "store_fingerprint": self.fingerprint,
            "classes": self.classes.tolist(), "images": self.images.tolist(),
        }

    def save(self, path: Path) -> Path:
        from metactl.fileio import atomic_write

        with atomic_write(path, "choose a writable output path with -o") as temporary:
            temporary.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> EpisodeSet:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"episode file {path} does not exist",
                            "write one with `metactl data split`") from None
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read episode file {path}: {error}",
                            "write a new one with `metactl data split`") from None
        if not isinstance(data, dict) or data.get("format") != EPISODE_FORMAT:
            raise DataError(f"{path} is not a metactl episode file",
                            "write one with `metactl data split`")
        try:
            episodes = cls(
                data["dataset"], data["scheme"], data["split"], int(data["size"]),
                int(data["way"]), int(data["shot"]), int(data["query"]), int(data["seed"]),
                data.get("store_fingerprint", ""),
                torch.tensor(data["classes"], dtype=torch.int64),
                torch.tensor(data["images"], dtype=torch.int64),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"episode file {path} is damaged ({error})",
                            "write a new one with `metactl data split`") from None
        expected = (episodes.episodes, episodes.way, episodes.shot + episodes.query)
        if episodes.classes.shape != expected[:2] or tuple(episodes.images.shape) != expected:
            raise DataError(f"episode file {path} has arrays of the wrong shape",
                            "write a new one with `metactl data split`")
        return episodes
