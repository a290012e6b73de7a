"""Training augmentation on sampled batches: crops, flips and colour jitter, seeded, and never
at evaluation; and normalisation with a store's train-split statistics."""

from __future__ import annotations

import torch

from metactl.data.augment import StandardAugmentation
from metactl.data.episodes import EpisodeSampler, EpisodeSet, SplitData
from metactl.engine.config import resolve_config
from metactl.engine.tasks import ImageTasks


def rgb_split(classes: int = 6, per_class: int = 5, side: int = 12, seed: int = 0,
              normalisation=None) -> SplitData:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, side, side, 3), generator=generator,
                           dtype=torch.uint8)
    offsets = torch.arange(0, classes * per_class + 1, per_class)
    return SplitData(images, offsets, tuple(f"c{i}" for i in range(classes)), (0,), "train",
                     "f" * 64, normalisation)


def batch_of(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.view(1, 1, *pixels.shape)  # (tasks, way, images, C, H, W)


def test_a_flip_alone_mirrors_every_image():
    images = torch.rand(4, 3, 5, 7)
    flipped = StandardAugmentation(padding=0, flip=1.0, jitter=0.0)(
        batch_of(images), torch.Generator().manual_seed(0))
    assert torch.equal(flipped.view_as(images), images.flip(-1))


def test_a_crop_alone_shifts_each_image_inside_its_padding():
    images = torch.ones(64, 1, 6, 6)
    cropped = StandardAugmentation(padding=2, flip=0.0, jitter=0.0)(
        batch_of(images), torch.Generator().manual_seed(0)).view_as(images)
    kept = cropped.sum(dim=(1, 2, 3))
    assert bool((kept >= 16).all()) and bool((kept <= 36).all())  # at most 2 rows/columns lost
    assert len(set(kept.tolist())) > 1  # windows differ between images
    rows = cropped[:, 0].amax(dim=2)  # a window is a contiguous block of ones
    assert all(torch.equal(row[row.nonzero().min():row.nonzero().max() + 1],
                           torch.ones(int(row.sum()))) for row in rows)


def test_colour_jitter_changes_pixels_within_range_and_the_seed_fixes_it():
    images = torch.rand(16, 3, 8, 8)
    augment = StandardAugmentation(padding=0, flip=0.0, jitter=0.4)
    first = augment(batch_of(images), torch.Generator().manual_seed(3))
    again = augment(batch_of(images), torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert not torch.allclose(first.view_as(images), images, atol=1e-3)
    assert float(first.min()) >= 0 and float(first.max()) <= 1


def test_the_sampler_augments_training_batches_reproducibly():
    split = rgb_split()
    plain = EpisodeSampler(split, 3, 1, 2, seed=5).sample(2)
    augmented = EpisodeSampler(split, 3, 1, 2, seed=5, augmentation=StandardAugmentation())
    again = EpisodeSampler(split, 3, 1, 2, seed=5, augmentation=StandardAugmentation())
    first = augmented.sample(2)
    assert torch.equal(first.classes, plain.classes)
    assert first.support_images.shape == plain.support_images.shape
    assert not torch.equal(first.support_images, plain.support_images)
    assert torch.equal(first.query_images, again.sample(2).query_images)


def test_images_are_normalised_with_the_train_statistics():
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    raw = EpisodeSampler(rgb_split(), 3, 1, 2, seed=1).sample(1)
    normalised = EpisodeSampler(rgb_split(normalisation=(mean, std)), 3, 1, 2, seed=1).sample(1)
    expected = (raw.query_images - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(
        3, 1, 1)
    assert torch.allclose(normalised.query_images, expected, atol=1e-6)
    assert rgb_split(normalisation=(mean, std)).unnormalised().normalisation is None


def test_augment_true_augments_training_but_not_the_validation_episodes():
    config = resolve_config("prototypical", {}, {}, {
        "way": 3, "shot": 1, "query": 2, "train_way": 3, "val_episodes": 4, "augment": True}, {})
    train, val = rgb_split(seed=0), rgb_split(seed=1)
    tasks = ImageTasks(config, train, val, invert=False, scheme="s", size=12)
    assert isinstance(tasks.sampler.augmentation, StandardAugmentation)
    validation = next(tasks.validation.batches(val, 4))
    episodes = EpisodeSet.draw(val, dataset=config["dataset"], scheme="s", size=12, way=3,
                               shot=1, query=2, episodes=4, seed=int(config["eval_seed"]))
    assert torch.equal(validation.query_images, next(episodes.batches(val, 4)).query_images)
    assert ImageTasks({**config, "augment": False}, train, val, False, "s",
                      12).sampler.augmentation is None
