"""Stores from folders of class folders: ``data import`` and the default dataset builder."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from PIL import Image
from testsupport import class_folders_of_colours

from metactl.data.cards import Content, parse_card
from metactl.data.folders import ImportRequest, build_folder_store, import_folder
from metactl.data.hdf5 import open_store
from metactl.data.layout import DatasetLayout
from metactl.data.manage import find_dataset, imported_datasets
from metactl.errors import DataError


def request(folder, **options) -> ImportRequest:
    return ImportRequest(folder, options.pop("name", "mine"), size=options.pop("size", 16),
                         way=options.pop("way", 2), **options)


def class_split(root) -> dict[str, tuple[str, ...]]:
    store = open_store(next((root / "mine").glob("*.h5")))
    return {split: store.split(split).class_names for split in store.split_names}


def test_the_class_split_is_seeded(tmp_path):
    folder = class_folders_of_colours(tmp_path / "images", classes=10, per_class=2)
    splits = []
    for seed, root in ((0, "a"), (0, "b"), (1, "c")):
        import_folder(request(folder, seed=seed), root=tmp_path / root)
        splits.append(class_split(tmp_path / root))
    assert splits[0] == splits[1] != splits[2]
    assert [len(splits[0][name]) for name in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum(splits[0].values(), ())) == [f"class-{i:02d}" for i in range(10)]


def test_an_import_becomes_a_dataset_with_a_card(tmp_path):
    folder = class_folders_of_colours(tmp_path / "images", classes=6, per_class=3)
    store = import_folder(request(folder, fractions=(0.5, 0.0, 0.5)), root=tmp_path)
    dataset = find_dataset("mine", tmp_path)
    assert list(imported_datasets(tmp_path)) == ["mine"]
    assert dataset.card.splits["import"].classes == {"train": 3, "test": 3}
    assert (dataset.card.geometry.channels, dataset.card.geometry.default_size) == (3, 16)
    data = open_store(store).split("train")
    assert tuple(data.images.shape) == (9, 16, 16, 3) and data.normalisation is not None


def test_split_by_folder_keeps_the_folders_splits(tmp_path):
    source = class_folders_of_colours(tmp_path / "flat", classes=6, per_class=2)
    folder = tmp_path / "images"
    for index, class_folder in enumerate(sorted(source.iterdir())):
        shutil.move(class_folder, folder / ("train" if index < 4 else "test") / class_folder.name)
    import_folder(request(folder, split_by="folder"), root=tmp_path)
    assert class_split(tmp_path) == {"train": ("class-00", "class-01", "class-02", "class-03"),
                                     "test": ("class-04", "class-05")}
    shutil.copytree(folder / "test" / "class-05", folder / "train" / "class-05")
    with pytest.raises(DataError, match="class 'class-05' is in both train/ and test/"):
        import_folder(request(folder, split_by="folder", name="again"), root=tmp_path)


def test_grayscale_images_make_a_one_channel_store_without_normalisation(tmp_path):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for number in range(4):
        (folder / f"c{number}").mkdir(parents=True)
        for index in range(2):
            pixels = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"c{number}" / f"{index}.png")
    store = open_store(import_folder(request(folder, fractions=(0.5, 0.0, 0.5)), root=tmp_path))
    assert tuple(store.split("test").images.shape) == (4, 16, 16)
    assert store.normalisation is None


CARD = {
    "name": "folders", "title": "Folders", "summary": "test", "licence": "CC0",
    "citation": "none", "sources": [],
    "geometry": {"channels": 3, "height": 20, "width": 20, "default_size": 20},
    "content": {"classes": 6, "images_per_class": 2},
    "splits": {"plain": {"folders": {"train": "top/train", "test": "top/test"},
                         "classes": {"train": 4, "test": 2}}},
    "default_split": "plain",
}


def test_the_default_builder_packs_the_card_folders_and_checks_the_counts(tmp_path):
    card = parse_card(CARD, "test card")
    layout = DatasetLayout(tmp_path, card)
    source = class_folders_of_colours(tmp_path / "flat", classes=6, per_class=2, side=20)
    for index, class_folder in enumerate(sorted(source.iterdir())):
        split = "train" if index < 4 else "test"
        shutil.move(class_folder, layout.extracted / "top" / split / class_folder.name)
    scheme = card.splits["plain"]
    store = open_store(build_folder_store(layout, scheme, 20, {}, lambda message: None))
    assert store.split("train").class_names == ("class-00", "class-01", "class-02", "class-03")
    assert len(store.attrs["normalisation"]["mean"]) == 3
    larger = dataclasses.replace(card, content=Content(classes=6, images_per_class=3))
    with pytest.raises(DataError, match="classes without 3 images"):
        build_folder_store(DatasetLayout(tmp_path, larger), scheme, 20, {}, print)
