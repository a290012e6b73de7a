"""Omniglot: checking an extraction and building stores, on real drawings."""

from __future__ import annotations

import dataclasses
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from omniglot_fixtures import (
    MIRROR,
    TINY_CHECKSUMS,
    TINY_SPLITS,
    drawing_paths,
    make_tiny_omniglot,
    require_mirror,
    write_split_list,
)
from PIL import Image

from metactl.data.cards import get_card
from metactl.data.hdf5 import open_store
from metactl.data.layout import DatasetLayout
from metactl.errors import DataError, UsageError
from metactl_datasets.omniglot import build_store, decode_drawing, validate_extracted


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> DatasetLayout:
    return make_tiny_omniglot(tmp_path_factory.mktemp("tiny-omniglot"))


@pytest.fixture(scope="module")
def vinyals_store(tiny):
    return open_store(build_store(tiny, "vinyals", 28, TINY_CHECKSUMS))


@pytest.fixture(scope="module")
def original_store(tiny):
    return open_store(build_store(tiny, "vinyals", 105, TINY_CHECKSUMS))


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> DatasetLayout:
    """A copy of the tiny extraction that a test may damage."""
    shutil.copytree(tiny.folder, tmp_path / tiny.card.name, ignore=shutil.ignore_patterns("*.h5"))
    return DatasetLayout(tmp_path, tiny.card)


def test_a_complete_extraction_validates(tiny):
    validate_extracted(tiny.extracted, tiny.card)


def test_validation_names_a_missing_archive_folder(tiny_copy):
    shutil.rmtree(tiny_copy.extracted / "images_evaluation")
    with pytest.raises(DataError, match="lacks images_evaluation") as caught:
        validate_extracted(tiny_copy.extracted, tiny_copy.card)
    assert "metactl data fetch omniglot --force" in caught.value.hint


def test_validation_counts_alphabets_and_characters(tiny_copy):
    shutil.rmtree(tiny_copy.extracted / "images_background" / "Korean")
    with pytest.raises(DataError) as caught:
        validate_extracted(tiny_copy.extracted, tiny_copy.card)
    message = caught.value.message
    assert "4 alphabets instead of 5" in message
    assert "11 characters instead of 13" in message


def test_validation_names_a_character_with_a_missing_drawing(tiny_copy):
    drawing_paths(tiny_copy, "Greek/character02")[-1].unlink()
    with pytest.raises(DataError, match=r"e\.g\. Greek/character02 has 19"):
        validate_extracted(tiny_copy.extracted, tiny_copy.card)


def test_the_real_card_rejects_the_tiny_extraction(tiny):
    with pytest.raises(DataError, match="13 characters instead of 1623"):
        validate_extracted(tiny.extracted, get_card("omniglot"))


def test_vinyals_store_has_sorted_listed_classes_and_rotations(vinyals_store):
    for split, characters in TINY_SPLITS.items():
        data = vinyals_store.split(split)
        assert data.class_names == tuple(sorted(characters))
        assert data.rotations == (0, 90, 180, 270)
        assert data.counts.tolist() == [20] * len(characters)
        assert data.images.shape == (20 * len(characters), 28, 28)
    assert vinyals_store.attrs["scheme"] == "vinyals"
    assert vinyals_store.attrs["size"] == 28
    assert vinyals_store.attrs["source_checksums"] == TINY_CHECKSUMS


def test_resized_drawings_are_bright_ink_on_black(vinyals_store):
    images = vinyals_store.split("train").images
    border = np.concatenate([images[:, 0].numpy().ravel(), images[:, -1].numpy().ravel(),
                             images[:, :, 0].numpy().ravel(), images[:, :, -1].numpy().ravel()])
    assert (border == 0).mean() > 0.95
    assert images.float().mean() < 64
    assert (images.flatten(1).amax(dim=1) > 200).all()


def test_a_class_is_the_contiguous_slice_of_its_drawings(tiny, vinyals_store):
    data = vinyals_store.split("test")
    for index, character in enumerate(data.class_names):
        start, stop = int(data.offsets[index]), int(data.offsets[index + 1])
        expected = [255 - np.asarray(Image.open(path).convert("L")
                                     .resize((28, 28), Image.Resampling.LANCZOS))
                    for path in drawing_paths(tiny, character)]
        assert np.array_equal(data.images[start:stop].numpy(), np.stack(expected))


def test_size_105_keeps_the_original_pixels_inverted(tiny, original_store):
    data = original_store.split("train")
    assert data.images.shape[1:] == (105, 105)
    for index, character in enumerate(data.class_names):
        originals = [np.asarray(Image.open(path).convert("L"))
                     for path in drawing_paths(tiny, character)]
        stored = data.images[data.offsets[index]:data.offsets[index + 1]].numpy()
        assert np.array_equal(stored, 255 - np.stack(originals))
    assert set(np.unique(data.images.numpy()).tolist()) == {0, 255}
    assert "kept at 105x105" in original_store.attrs["preprocessing"]


def test_background_scheme_splits_by_archive(tiny):
    store = open_store(build_store(tiny, "background", 28, TINY_CHECKSUMS))
    assert store.split_names == ("train", "test")
    train, test = store.split("train"), store.split("test")
    assert train.rotations == (0,) and test.rotations == (0,)
    assert {name.split("/")[0] for name in train.class_names} == {"Greek", "Latin", "Korean"}
    assert {name.split("/")[0] for name in test.class_names} == {"Angelic", "Keble"}
    assert store.path.name == "omniglot-background-28.h5"


def test_builds_are_deterministic(tiny, vinyals_store, tmp_path):
    shutil.copytree(tiny.folder, tmp_path / "omniglot", ignore=shutil.ignore_patterns("*.h5"))
    rebuilt = open_store(build_store(DatasetLayout(tmp_path, tiny.card), "vinyals", 28, {}))
    assert rebuilt.fingerprint == vinyals_store.fingerprint


def test_progress_reports_every_drawing(tiny_copy):
    calls = []
    build_store(tiny_copy, "background", 28, {}, progress=lambda done, total: calls.append(
        (done, total)))
    assert calls[0] == (0, 260) and calls[-1] == (260, 260)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_a_listed_character_missing_from_the_extraction(tiny_copy):
    write_split_list(tiny_copy.download_path("splits/vinyals/val.txt"),
                     ["Korean/character01", "Korean/character09"])
    with pytest.raises(DataError, match=r"extraction lacks \(e\.g\. Korean/character09\)"):
        build_store(tiny_copy, "vinyals", 28, {})


def test_a_split_list_with_a_bad_line(tiny_copy):
    path = tiny_copy.download_path("splits/vinyals/val.txt")
    path.write_text(path.read_text() + "Korean\n")
    with pytest.raises(DataError, match="line 9 of the split list"):
        build_store(tiny_copy, "vinyals", 28, {})


def test_a_split_list_missing_rotations(tiny_copy):
    write_split_list(tiny_copy.download_path("splits/vinyals/val.txt"), TINY_SPLITS["val"],
                     rotations=(0, 90))
    with pytest.raises(DataError, match=r"rotations \[0, 90\], not \[0, 90, 180, 270\]"):
        build_store(tiny_copy, "vinyals", 28, {})


def test_a_missing_split_list(tiny_copy):
    tiny_copy.download_path("splits/vinyals/test.txt").unlink()
    with pytest.raises(DataError, match="cannot read the split list") as caught:
        build_store(tiny_copy, "vinyals", 28, {})
    assert "fetch omniglot" in caught.value.hint


def test_overlapping_splits(tiny_copy):
    write_split_list(tiny_copy.download_path("splits/vinyals/val.txt"),
                     ["Korean/character01", "Greek/character01"])
    layout = dataclasses.replace(tiny_copy, card=_with_vinyals_counts(tiny_copy, val=2))
    with pytest.raises(DataError, match="Greek/character01 is in both split 'train'"):
        build_store(layout, "vinyals", 28, {})


def test_a_split_with_another_count_than_the_card(tiny_copy):
    layout = dataclasses.replace(tiny_copy, card=_with_vinyals_counts(tiny_copy, train=1028))
    with pytest.raises(DataError, match="has 7 characters; the card expects 1028"):
        build_store(layout, "vinyals", 28, {})


def test_unknown_scheme_and_bad_size(tiny):
    with pytest.raises(UsageError, match="no split 'ravi'"):
        build_store(tiny, "ravi", 28, {})
    with pytest.raises(UsageError, match="must be positive"):
        build_store(tiny, "vinyals", 0, {})


def test_a_damaged_drawing_is_named(tiny_copy):
    path = drawing_paths(tiny_copy, "Latin/character01")[3]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=f"cannot decode {path}"):
        build_store(tiny_copy, "vinyals", 28, {})


def test_decode_drawing_checks_the_geometry(tiny):
    path = drawing_paths(tiny, "Greek/character01")[0]
    with pytest.raises(DataError, match="is 105x105, not 84x84"):
        decode_drawing(path, 28, geometry=(84, 84))


def _with_vinyals_counts(layout: DatasetLayout, **counts: int):
    card = layout.card
    scheme = card.splits["vinyals"]
    vinyals = dataclasses.replace(scheme, classes={**scheme.classes, **counts})
    return dataclasses.replace(card, splits={**card.splits, "vinyals": vinyals})


@pytest.mark.slow
def test_the_whole_omniglot(tmp_path):
    """All 32,460 drawings: both split schemes have the published class counts."""
    require_mirror("images_background.zip", "images_evaluation.zip", "splits/vinyals/train.txt")
    card = get_card("omniglot")
    layout = DatasetLayout(tmp_path, card)
    for name in ("images_background.zip", "images_evaluation.zip"):
        with zipfile.ZipFile(MIRROR / name) as archive:
            archive.extractall(layout.extracted)
    shutil.copytree(MIRROR / "splits", layout.downloads / "splits")
    validate_extracted(layout.extracted, card)

    vinyals = open_store(build_store(layout, "vinyals", 28, {}))
    for split, classes in {"train": 1028, "val": 172, "test": 423}.items():
        summary = vinyals.split_summary(split)
        assert (summary.classes, summary.sampling_classes) == (classes, 4 * classes)
        assert summary.images_per_class == (20, 20)
        assert summary.image_shape == (28, 28)
    background = open_store(build_store(layout, "background", 28, {}))
    assert [background.split_summary(split).classes for split in ("train", "test")] == [964, 659]
    assert vinyals.split("train").images.shape == (20560, 28, 28)
    assert Path(vinyals.path).name == "omniglot-vinyals-28.h5"
