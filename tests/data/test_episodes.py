"""The episode sampler and episode files, on a real tiny Omniglot store."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from omniglot_fixtures import TINY_CHECKSUMS, make_tiny_omniglot

from metactl.data.episodes import EpisodeSampler, EpisodeSet, SplitData, TaskBatch
from metactl.data.hdf5 import open_store
from metactl.errors import DataError, UsageError
from metactl_datasets.omniglot import build_store

WAY, SHOT, QUERY = 5, 2, 3


@pytest.fixture(scope="module")
def train(tmp_path_factory) -> SplitData:
    """7 real characters x 4 rotations = 28 sampling classes of 20 drawings, 28x28."""
    layout = make_tiny_omniglot(tmp_path_factory.mktemp("tiny-omniglot"))
    return open_store(build_store(layout, "vinyals", 28, TINY_CHECKSUMS)).split("train")


def draw_set(train: SplitData, seed: int = 7, episodes: int = 6) -> EpisodeSet:
    return EpisodeSet.draw(train, dataset="omniglot", scheme="vinyals", size=28, way=WAY,
                           shot=SHOT, query=QUERY, episodes=episodes, seed=seed)


def assert_same_batch(first: TaskBatch, second: TaskBatch) -> None:
    for field in ("support_images", "support_labels", "query_images", "query_labels", "classes"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field


def expected_pixels(train: SplitData, sampling_class: int, image: int) -> torch.Tensor:
    """The stored drawing rotated by its sampling class's angle, as float in [0, 1], (1, H, W)."""
    stored, turn = divmod(sampling_class, len(train.rotations))
    pixels = train.images[int(train.offsets[stored]) + image]
    quarter_turns = train.rotations[turn] // 90
    return torch.rot90(pixels, quarter_turns, dims=(-2, -1)).float().div(255).unsqueeze(0)


def test_the_same_seed_gives_the_same_tasks(train):
    first = EpisodeSampler(train, WAY, SHOT, QUERY, seed=3).sample(4)
    second = EpisodeSampler(train, WAY, SHOT, QUERY, seed=3).sample(4)
    assert_same_batch(first, second)
    other = EpisodeSampler(train, WAY, SHOT, QUERY, seed=4).sample(4)
    assert not torch.equal(first.classes, other.classes)


def test_the_same_seed_writes_the_same_file(train, tmp_path):
    first = draw_set(train).save(tmp_path / "a.json")
    second = draw_set(train).save(tmp_path / "b.json")
    assert first.read_bytes() == second.read_bytes()
    third = draw_set(train, seed=8).save(tmp_path / "c.json")
    assert third.read_bytes() != first.read_bytes()


def test_shapes_and_label_layout(train):
    batch = EpisodeSampler(train, WAY, SHOT, QUERY, seed=0).sample(4)
    assert batch.support_images.shape == (4, WAY * SHOT, 1, 28, 28)
    assert batch.query_images.shape == (4, WAY * QUERY, 1, 28, 28)
    assert batch.support_images.dtype == torch.float32
    assert 0 <= float(batch.support_images.min()) and float(batch.support_images.max()) <= 1
    labels = torch.arange(WAY)
    assert torch.equal(batch.support_labels, labels.repeat_interleave(SHOT).expand(4, -1))
    assert torch.equal(batch.query_labels, labels.repeat_interleave(QUERY).expand(4, -1))
    assert batch.classes.shape == (4, WAY) and batch.tasks == 4


def test_classes_and_drawings_do_not_repeat_within_a_task(train):
    sampler = EpisodeSampler(train, WAY, SHOT, QUERY, seed=1)
    classes, images = sampler.draw_indices(50)
    for task in range(50):
        assert len(set(classes[task].tolist())) == WAY
        for position in range(WAY):
            assert len(set(images[task, position].tolist())) == SHOT + QUERY
    assert int(images.max()) < 20 and int(classes.max()) < train.num_classes


def test_every_image_is_its_stored_drawing_rotated(train):
    sampler = EpisodeSampler(train, WAY, SHOT, QUERY, seed=2)
    classes, images = sampler.draw_indices(8)
    batch = sampler.gather(classes, images)
    assert set((classes % 4).flatten().tolist()) == {0, 1, 2, 3}
    for task in range(8):
        for position in range(WAY):
            sampling_class = int(classes[task, position])
            for index, image in enumerate(images[task, position].tolist()):
                expected = expected_pixels(train, sampling_class, image)
                if index < SHOT:
                    actual = batch.support_images[task, position * SHOT + index]
                else:
                    actual = batch.query_images[task, position * QUERY + index - SHOT]
                assert torch.equal(actual, expected)


def test_a_rot090_class_is_torch_rot90_of_the_stored_drawing(train):
    sampler = EpisodeSampler(train, 2, 1, 0, seed=0)
    # Sampling class 1 is stored class 0 at 90 degrees; class 4 is stored class 1 unrotated.
    batch = sampler.gather(torch.tensor([[1, 4]]), torch.tensor([[[6], [0]]]))
    stored = train.images[6].float() / 255
    assert torch.equal(batch.support_images[0, 0, 0], torch.rot90(stored, 1, dims=(0, 1)))
    assert not torch.equal(batch.support_images[0, 0, 0], stored)
    assert torch.equal(batch.support_images[0, 1, 0], train.images[20].float() / 255)
    assert train.class_name(1) == f"{train.class_names[0]}/rot090"


def test_impossible_task_shapes_are_usage_errors(train):
    with pytest.raises(UsageError, match="way 29 is larger than the 28 classes") as caught:
        EpisodeSampler(train, 29, 1, 1)
    assert "--way 28" in caught.value.hint
    with pytest.raises(UsageError, match="shot \\+ query = 21 is more than the 20 images"):
        EpisodeSampler(train, 5, 5, 16)
    with pytest.raises(UsageError, match="way must be at least 2"):
        EpisodeSampler(train, 1, 1, 1)


def test_an_episode_file_round_trips(train, tmp_path):
    episodes = draw_set(train)
    loaded = EpisodeSet.load(episodes.save(tmp_path / "episodes.json"))
    assert dataclasses.astuple(loaded)[:9] == dataclasses.astuple(episodes)[:9]
    assert torch.equal(loaded.classes, episodes.classes)
    assert torch.equal(loaded.images, episodes.images)
    assert loaded.fingerprint == train.fingerprint and len(train.fingerprint) == 64


def test_replaying_a_file_gives_the_images_of_a_fresh_sample(train, tmp_path):
    loaded = EpisodeSet.load(draw_set(train, seed=11).save(tmp_path / "episodes.json"))
    fresh = EpisodeSampler(train, WAY, SHOT, QUERY, seed=11).sample(6)
    batches = list(loaded.batches(train, tasks_per_batch=4))
    assert [batch.tasks for batch in batches] == [4, 2]
    replay = TaskBatch(*(torch.cat([getattr(batch, field) for batch in batches]) for field in
                         ("support_images", "support_labels", "query_images", "query_labels",
                          "classes")), WAY, SHOT, QUERY)
    assert_same_batch(replay, fresh)


def test_a_file_from_another_store_is_refused(train):
    episodes = draw_set(train)
    other = dataclasses.replace(train, fingerprint="0" * 64)
    with pytest.raises(DataError, match="drawn from a different omniglot store"):
        next(episodes.batches(other))


def test_a_file_naming_classes_the_split_lacks(train):
    episodes = dataclasses.replace(draw_set(train), classes=torch.full((6, WAY), 99))
    with pytest.raises(DataError, match="names class 99"):
        next(episodes.batches(train))


def test_damaged_episode_files(train, tmp_path):
    path = draw_set(train).save(tmp_path / "episodes.json")
    data = json.loads(path.read_text())
    damaged = {
        "missing.json": None,
        "truncated.json": path.read_text()[:200],
        "other.json": json.dumps({"format": "something else"}),
        "no-way.json": json.dumps({key: value for key, value in data.items() if key != "way"}),
        "bad-shape.json": json.dumps({**data, "images": [row[:2] for row in data["images"]]}),
    }
    messages = {
        "missing.json": "does not exist", "truncated.json": "cannot read episode file",
        "other.json": "is not a metactl episode file", "no-way.json": "is damaged",
        "bad-shape.json": "wrong shape",
    }
    for name, text in damaged.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=messages[name]) as caught:
            EpisodeSet.load(tmp_path / name)
        assert "metactl data split" in caught.value.hint


def test_spread_classes_keeps_whole_stored_classes_spread_over_the_split():
    counts = [3, 2, 4, 1, 2]  # images per stored class
    images = torch.cat([torch.full((count, 2, 2), index, dtype=torch.uint8)
                        for index, count in enumerate(counts)])
    offsets = torch.tensor([0, 3, 5, 9, 10, 12])
    split = SplitData(images, offsets, tuple("abcde"), rotations=(0, 90), name="train")
    subset = split.spread_classes(5)  # 5 sampling classes -> 3 stored classes, with rotations
    assert subset.class_names == ("a", "c", "e") and subset.num_classes == 6
    assert subset.offsets.tolist() == [0, 3, 7, 9]
    assert subset.images[:, 0, 0].tolist() == [0, 0, 0, 2, 2, 2, 2, 4, 4]
    assert split.spread_classes(10) is split and split.spread_classes(99) is split
