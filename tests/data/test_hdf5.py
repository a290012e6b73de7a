"""The HDF5 store: round trip, fingerprint, atomic writes and damaged files, on real drawings."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omniglot_fixtures import TINY_CHECKSUMS, make_tiny_omniglot

import metactl
from metactl.data.hdf5 import StoreSplit, content_fingerprint, open_store, write_store
from metactl.errors import DataError, UsageError
from metactl_datasets.omniglot import build_store

ATTRS = {"dataset": "omniglot", "scheme": "vinyals", "size": 28,
         "source_checksums": TINY_CHECKSUMS, "preprocessing": "test"}


@pytest.fixture(scope="module")
def built_store(tmp_path_factory) -> Path:
    """A real tiny Omniglot store, built once; tests copy it before damaging it."""
    layout = make_tiny_omniglot(tmp_path_factory.mktemp("tiny-omniglot"))
    return build_store(layout, "vinyals", 28, TINY_CHECKSUMS)


@pytest.fixture(scope="module")
def real_splits(built_store) -> dict[str, StoreSplit]:
    """The store's splits as arrays, plus a colour split made from real drawings."""
    store = open_store(built_store)
    splits = {}
    for name in store.split_names:
        data = store.split(name)
        splits[name] = StoreSplit(data.images.numpy(), data.offsets.numpy(),
                                  list(data.class_names), data.rotations)
    train = splits["train"]
    colour = np.stack([train.images, 255 - train.images, train.images // 2], axis=-1)
    splits["colour"] = dataclasses.replace(train, images=colour, rotations=(0,))
    return splits


@pytest.fixture
def store_copy(built_store, tmp_path) -> Path:
    """A copy of the built store under ``<tmp>/omniglot/``, as the layout places stores."""
    copy = tmp_path / "omniglot" / built_store.name
    copy.parent.mkdir()
    copy.write_bytes(built_store.read_bytes())
    return copy


def test_round_trip_keeps_arrays_names_and_attrs(real_splits, tmp_path):
    path = write_store(tmp_path / "store.h5", real_splits, ATTRS)
    store = open_store(path)
    assert set(store.split_names) == set(real_splits)
    for name, written in real_splits.items():
        data = store.split(name)
        assert data.images.dtype == torch.uint8
        assert np.array_equal(data.images.numpy(), written.images)
        assert np.array_equal(data.offsets.numpy(), written.offsets)
        assert data.offsets.dtype == torch.int64
        assert list(data.class_names) == written.class_names
        assert data.rotations == written.rotations
        assert data.name == name and data.fingerprint == store.fingerprint
    assert store.split("colour").images.shape[1:] == (28, 28, 3)
    for key, value in ATTRS.items():
        assert store.attrs[key] == value
    assert store.attrs["metactl_version"] == metactl.__version__
    assert datetime.fromisoformat(store.attrs["created"]).tzinfo is not None
    assert store.fingerprint == content_fingerprint(real_splits)


def test_the_fingerprint_follows_content_not_file_bytes(real_splits, tmp_path):
    first = open_store(write_store(tmp_path / "a.h5", real_splits, ATTRS))
    second = open_store(write_store(tmp_path / "b.h5", real_splits, {"other": "provenance"}))
    assert first.fingerprint == second.fingerprint

    train = real_splits["train"]
    one_pixel = train.images.copy()
    one_pixel[5, 14, 14] ^= 1
    renamed = [*train.class_names[:-1], "Greek/character99"]
    moved = np.array([0, 20, 40, 60, 80, 90, 120, 140])
    for changed in (dataclasses.replace(train, images=one_pixel),
                    dataclasses.replace(train, class_names=renamed),
                    dataclasses.replace(train, rotations=(0,)),
                    dataclasses.replace(train, offsets=moved)):
        assert content_fingerprint({**real_splits, "train": changed}) != first.fingerprint


def test_classes_are_contiguous_sorted_slices(built_store):
    data = open_store(built_store).split("train")
    assert list(data.class_names) == sorted(data.class_names)
    assert data.offsets[0] == 0 and data.offsets[-1] == len(data.images)
    assert (data.counts == 20).all()


def test_write_replaces_atomically_and_leaves_no_temporary(real_splits, tmp_path):
    path = tmp_path / "store.h5"
    path.write_text("an older, broken store")
    write_store(path, real_splits, ATTRS)
    assert open_store(path).fingerprint == content_fingerprint(real_splits)
    assert [item.name for item in tmp_path.iterdir()] == ["store.h5"]


def test_a_failed_write_is_a_data_error_and_leaves_nothing(real_splits, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match="cannot write the store"):
        write_store(blocker / "store.h5", real_splits, ATTRS)
    assert [item.name for item in tmp_path.iterdir()] == ["file"]


def test_invalid_splits_are_refused_before_writing(real_splits, tmp_path):
    train = real_splits["train"]
    bad = {
        "float images": dataclasses.replace(train, images=train.images.astype(np.float32)),
        "short offsets": dataclasses.replace(train, offsets=train.offsets[:-1]),
        "offsets past the end": dataclasses.replace(train, offsets=train.offsets + 1),
        "repeated names": dataclasses.replace(train, class_names=["x"] * len(train.class_names)),
    }
    for problem, split in bad.items():
        with pytest.raises(ValueError, match="split 'train'"):
            write_store(tmp_path / "store.h5", {"train": split}, ATTRS)
        assert not (tmp_path / "store.h5").exists(), problem


def test_unknown_split_lists_the_splits(built_store):
    with pytest.raises(UsageError, match="no split 'validation'") as caught:
        open_store(built_store).split("validation")
    assert caught.value.hint == "use one of: train, val, test"


def test_summary_describes_splits_and_provenance(built_store):
    summary = open_store(built_store).summary()
    train = summary["splits"][0]
    assert [split["name"] for split in summary["splits"]] == ["train", "val", "test"]
    assert train == {"name": "train", "classes": 7, "rotations": [0, 90, 180, 270],
                     "sampling_classes": 28, "images": 140, "image_shape": [28, 28],
                     "images_per_class": {"min": 20, "max": 20}}
    provenance = summary["provenance"]
    assert provenance["dataset"] == "omniglot" and provenance["size"] == 28
    assert provenance["source_checksums"] == TINY_CHECKSUMS
    assert "LANCZOS" in provenance["preprocessing"]
    assert summary["fingerprint"] == open_store(built_store).fingerprint


def test_a_store_holds_no_open_file(built_store):
    store = pickle.loads(pickle.dumps(open_store(built_store)))
    assert store.split("val").images.shape == (40, 28, 28)


def test_a_missing_store_says_how_to_build_it(tmp_path):
    with pytest.raises(DataError, match="no store at") as caught:
        open_store(tmp_path / "omniglot" / "omniglot-vinyals-28.h5")
    assert "metactl data preprocess omniglot" in caught.value.hint


def test_a_file_that_is_not_hdf5(store_copy):
    store_copy.write_text("<html>not found</html>")
    with pytest.raises(DataError, match="not a metactl store") as caught:
        open_store(store_copy)
    assert "metactl data preprocess omniglot" in caught.value.hint


def test_an_hdf5_file_that_is_not_a_store(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as file:
        file["x"] = np.arange(3)
    with pytest.raises(DataError, match="not a metactl store"):
        open_store(path)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_truncated_store(store_copy, keep):
    data = store_copy.read_bytes()
    store_copy.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="is damaged") as caught:
        open_store(store_copy).split("train")
    error = caught.value
    assert "\n" not in error.one_line()
    assert "metactl data preprocess omniglot" in error.hint


def test_a_store_with_inconsistent_offsets(store_copy):
    with h5py.File(store_copy, "r+") as file:
        file["train/offsets"][-1] = 9999
    with pytest.raises(DataError, match="offsets of split 'train' do not match"):
        open_store(store_copy).split("train")


def test_verify_finds_changed_pixels(store_copy):
    open_store(store_copy).verify()
    with h5py.File(store_copy, "r+") as file:
        file["test/images"][3, 10, 10] ^= 0xFF
    store = open_store(store_copy)
    store.split("test")  # cheap checks cannot see it
    with pytest.raises(DataError, match="does not match its fingerprint"):
        store.verify()


def test_a_store_from_a_newer_metactl(store_copy):
    with h5py.File(store_copy, "r+") as file:
        file.attrs["format_version"] = 99
    with pytest.raises(DataError, match="newer metactl"):
        open_store(store_copy)


def test_a_store_deleted_after_opening(store_copy):
    store = open_store(store_copy)
    store_copy.unlink()
    with pytest.raises(DataError, match="has gone"):
        store.split("train")


def test_a_store_without_its_fingerprint(store_copy):
    with h5py.File(store_copy, "r+") as file:
        del file.attrs["fingerprint"]
    with pytest.raises(DataError, match="is damaged .*no fingerprint"):
        open_store(store_copy)
