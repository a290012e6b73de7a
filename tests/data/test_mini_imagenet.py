"""mini-ImageNet: the card, and building stores from small synthetic archives made here.

The archives have the mirror's layout (four tar.xz parts of ``images/<filename>.jpg``, Ravi CSV
split lists) but hold 8 classes of 6 images; the card is the real one with its counts cut down.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile

import numpy as np
import pytest
from PIL import Image
from testsupport import TINY_MINI_IMAGENET, jpeg_bytes, tiny_mini_imagenet_files, write_files

from metactl.data.cards import Content
from metactl.data.hdf5 import open_store
from metactl.data.layout import DatasetLayout
from metactl.data.manage import find_dataset
from metactl.errors import DataError

PER_CLASS = 6


def tiny_dataset():
    dataset = find_dataset("mini-imagenet")
    card = dataset.card
    ravi = dataclasses.replace(card.splits["ravi"], classes={
        split: len(wnids) for split, wnids in TINY_MINI_IMAGENET.items()})
    tiny = dataclasses.replace(card, content=Content(classes=8, images_per_class=PER_CLASS,
                                                     images=8 * PER_CLASS),
                               splits={"ravi": ravi})
    return type(dataset)(tiny)


def lay_out(root, files) -> DatasetLayout:
    dataset = tiny_dataset()
    layout = DatasetLayout(root, dataset.card)
    write_files(layout.downloads, files)
    return layout


def build(layout: DatasetLayout, size: int = 84):
    dataset = tiny_dataset()
    messages: list[str] = []
    path = dataset.build_store(layout, dataset.card.splits["ravi"], size,
                               {"train-1.tar.xz": "0" * 64}, messages.append)
    return path, messages


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return tiny_mini_imagenet_files(PER_CLASS)


def decoded(files: dict[str, bytes], part: str, filename: str) -> np.ndarray:
    with tarfile.open(fileobj=io.BytesIO(files[part]), mode="r:xz") as bundle:
        data = bundle.extractfile(f"images/{filename}").read()
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def test_the_card_states_the_terms_and_fetches_the_images_from_a_mirror_only():
    card = find_dataset("mini-imagenet").card
    assert "non-commercial research and educational use only" in card.terms
    assert {s.path for s in card.mirror_only} == {"train-1.tar.xz", "train-2.tar.xz",
                                                   "val.tar.xz", "test.tar.xz"}
    assert all(s.url.startswith("https://raw.githubusercontent.com/twitter/")
               for s in card.sources if not s.mirror_only)
    assert (card.geometry.channels, card.geometry.height, card.content.images) == (3, 84, 60000)
    assert card.splits["ravi"].classes == {"train": 64, "val": 16, "test": 20}


def test_a_store_holds_every_image_sorted_by_class_with_train_statistics(tmp_path, files):
    layout = lay_out(tmp_path, files)
    path, messages = build(layout)
    store = open_store(path)
    assert store.split_names == ("train", "val", "test")
    train = store.split("train")
    assert train.class_names == tuple(TINY_MINI_IMAGENET["train"])
    assert tuple(train.images.shape) == (4 * PER_CLASS, 84, 84, 3)
    assert train.offsets.tolist() == [0, 6, 12, 18, 24]
    # Class n00000003 is in the second part; its second image sits at row 12 + 1.
    expected = decoded(files, "train-2.tar.xz", "n0000000300000002.jpg")
    assert np.array_equal(train.images[13].numpy(), expected)
    pixels = train.images.numpy().reshape(-1, 3) / 255
    mean, std = train.normalisation
    assert np.allclose(mean, pixels.mean(0), atol=1e-5)
    assert np.allclose(std, pixels.std(0), atol=1e-5)
    assert store.attrs["scheme"] == "ravi" and "ImageNet" in store.attrs["terms"]
    assert any("every row of the split lists has its image" in m for m in messages)


def test_a_smaller_store_is_resized(tmp_path, files):
    path, _ = build(lay_out(tmp_path, files), size=32)
    assert tuple(open_store(path).split("test").images.shape) == (2 * PER_CLASS, 32, 32, 3)


def replace_member(files: dict[str, bytes], part: str, filename: str, data: bytes | None
                   ) -> dict[str, bytes]:
    """``files`` with one member of ``part`` replaced by ``data`` (or removed if None)."""
    with tarfile.open(fileobj=io.BytesIO(files[part]), mode="r:xz") as bundle:
        members = [(m, bundle.extractfile(m).read()) for m in bundle.getmembers()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as bundle:
        for member, content in members:
            if member.name == f"images/{filename}":
                if data is None:
                    continue
                content, member.size = data, len(data)
            bundle.addfile(member, io.BytesIO(content))
    return {**files, part: buffer.getvalue()}


@pytest.mark.parametrize(("damage", "message"), [
    (lambda f: replace_member(f, "val.tar.xz", "n0000000500000003.jpg", b"not a jpeg"),
     "images/n0000000500000003.jpg in val.tar.xz does not decode"),
    (lambda f: replace_member(f, "test.tar.xz", "n0000000700000001.jpg",
                              jpeg_bytes(np.random.default_rng(0), side=80)),
     "n0000000700000001.jpg in test.tar.xz is 80x80 RGB, not 84x84 RGB"),
    (lambda f: replace_member(f, "train-1.tar.xz", "n0000000200000006.jpg", None),
     "1 image(s) of split 'train' are in no archive, e.g. n0000000200000006.jpg (line 13 of "
     "splits/ravi/train.csv)"),
    (lambda f: {**f, "train-2.tar.xz": f["train-2.tar.xz"][:len(f["train-2.tar.xz"]) // 2]},
     "train-2.tar.xz is corrupt or truncated"),
    (lambda f: {**f, "splits/ravi/val.csv": b"file,class\n"},
     "splits/ravi/val.csv does not start with the header filename,label"),
])
def test_bad_content_is_named_and_nothing_is_written(tmp_path, files, damage, message):
    layout = lay_out(tmp_path, damage(files))
    with pytest.raises(DataError) as raised:
        build(layout)
    assert message in raised.value.message
    assert "metactl data fetch mini-imagenet --force" in raised.value.hint
    assert layout.stores() == [] and not list(layout.folder.glob("*.tmp"))


def test_counts_that_differ_from_the_card_are_refused(tmp_path, files):
    short = {**files, "splits/ravi/test.csv": b"filename,label\n" + b"".join(
        f"n0000000700000{i:03d}.jpg,n00000007\n".encode() for i in range(1, 7))}
    with pytest.raises(DataError, match="split 'test' lists 1 classes; the card expects 2"):
        build(lay_out(tmp_path, short))
